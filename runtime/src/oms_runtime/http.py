"""The HTTP surface every service shares: health, readiness, bearer-token principals, request spans."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, Field

from . import metrics, telemetry
from .settings import ApiGrant, Role

if TYPE_CHECKING:
    from .service import Service

_bearer = HTTPBearer(auto_error=False, description="A token from OMS_API_TOKENS")


class Problem(BaseModel):
    """What an error answer carries (FastAPI's HTTPException body)."""

    detail: str


class NotReady(BaseModel):
    status: str = Field(examples=["unavailable"])
    problems: dict[str, str] = Field(
        description="What keeps the service from being ready, in plain words, by part: `database`, `kafka`, "
        "`consumers`, `startup`",
        examples=[{"database": "database unreachable", "consumers": "consumers not started yet"}],
    )


UNAUTHORIZED = {"model": Problem, "description": "No bearer token, or one that is not configured"}

# Probes and scrapes make neither spans nor request metrics: they come every few seconds and say nothing new.
_UNOBSERVED = frozenset({"/healthz", "/readyz", "/metrics"})
# Methods as HTTP knows them; anything else is `_OTHER` (semantic conventions), so a client cannot mint series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def configured_token(tokens: Iterable[str], presented: str) -> str | None:
    """The configured token a presented one is, found in constant time: every configured token is compared (as a
    digest of fixed length, so neither a matching prefix nor a token's length shows in the time taken), with no
    early exit."""
    wanted = _digest(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(_digest(token), wanted):
            found = token
    return found


def principal_of(tokens: Mapping[str, str | ApiGrant], presented: str) -> str | None:
    """The principal of a presented token, or None (constant time, as `configured_token`)."""
    token = configured_token(tokens, presented)
    if token is None:
        return None
    grant = tokens[token]
    return grant if isinstance(grant, str) else grant.principal


def _grant(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiGrant:
    """What the request's bearer token grants; 401 without a known token."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    settings = request.app.state.service.settings
    token = configured_token(settings.api_tokens, credentials.credentials)
    grant = settings.grant(token) if token is not None else None
    if grant is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown bearer token", {"WWW-Authenticate": "Bearer"})
    return grant


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """The principal behind the request's bearer token; 401 without a known token."""
    return _grant(request, credentials).principal


Principal = Annotated[str, Depends(principal)]


def _document_unauthorized(document: dict[str, Any]) -> dict[str, Any]:
    """Add 401 to every operation of an OpenAPI document that takes a bearer token: the answer `principal` gives
    without a known token, whichever service's route depends on it (a fuzzer flags an undocumented answer)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema())
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if any("HTTPBearer" in requirement for requirement in operation.get("security", ())):
                operation["responses"].setdefault(
                    str(status.HTTP_401_UNAUTHORIZED), {"description": UNAUTHORIZED["description"], "content": problem}
                )
    return document


def require_role(*roles: Role) -> Any:
    """A dependency giving the principal of a token that holds one of `roles` (admin holds every one): 401 without
    a known token, 403 when its roles do not allow the route. `who: Annotated[str, require_role(Role.cs)]`."""
    allowed = frozenset(roles) | {Role.admin}
    needed = ", ".join(sorted(allowed))

    def holder(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
        grant = _grant(request, credentials)
        if not grant.roles & allowed:
            held = ", ".join(sorted(grant.roles)) or "none"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"{grant.principal} may not do this: it needs one of {needed} (holds {held})"
            )
        return grant.principal

    return Depends(holder)


def _encodable(value: Any) -> Any:
    """`value` as JSON can carry it: every string encodable as UTF-8 (a lone surrogate becomes "?"), and a float
    that is not finite (NaN, Infinity: Python's JSON parser takes them) as its name, since JSON has no such number."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


def create_app(service: Service, description: str) -> FastAPI:
    app = FastAPI(
        title=f"OMS {service.name} service",
        version="1.0.0",
        description=description,
        lifespan=service.lifespan,
    )
    app.state.service = service
    generate = app.openapi  # FastAPI's, which builds the document once and keeps it
    app.openapi = lambda: _document_unauthorized(generate())  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input; a body sent as another content type is echoed as bytes, and bytes
        # that are not UTF-8 made it fail with a 500, as did a lone surrogate (`"\ud800"`) in a JSON string, which
        # UTF-8 cannot encode, and NaN or Infinity in the body, which JSON cannot carry back (all found by
        # tests/fuzz; a 500 there also closed the connection under the next request). They are echoed as text.
        readable = jsonable_encoder(error.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
        return JSONResponse({"detail": _encodable(readable)}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.middleware("http")
    async def trace_requests(request: Request, call_next: Any) -> Any:
        if request.url.path in _UNOBSERVED:
            return await call_next(request)
        query = (part for pair in request.query_params.multi_items() for part in pair)
        if "\x00" in request.url.path or any("\x00" in part for part in query):
            # No order id, SKU or source code holds a NUL, and PostgreSQL text cannot (GET /stock/%00 was a 500,
            # found by tests/fuzz): refused here, for every route, before it reaches a query.
            return JSONResponse(
                {"detail": "the path or query contains a NUL character (%00), which no id or code can hold"},
                status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        started = time.perf_counter()
        method = request.method if request.method in _METHODS else "_OTHER"
        carrier = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
        with telemetry.tracer().start_as_current_span(
            method,
            context=telemetry.propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": request.url.path},
        ) as span:
            attributes: dict[str, Any] = {"http.request.method": method}
            try:
                response = await call_next(request)
            except Exception as error:
                attributes[metrics.ERROR_TYPE] = type(error).__name__
                raise
            else:
                attributes["http.response.status_code"] = response.status_code
                if response.status_code >= 500:
                    attributes[metrics.ERROR_TYPE] = str(response.status_code)
                span.set_attribute("http.response.status_code", response.status_code)
                return response
            finally:
                # The route's template (/orders/{order_id}), never the path: one series per route, not per order.
                route = getattr(request.scope.get("route"), "path", None)
                if route:
                    attributes["http.route"] = route
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
                metrics.HTTP_DURATION.record(time.perf_counter() - started, attributes)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service.name}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The broker and the database are reachable and the consumers run",
        description="Unauthenticated, so it says what is wrong in plain words only; the service's log has the detail.",
        responses={
            status.HTTP_503_SERVICE_UNAVAILABLE: {"model": NotReady, "description": "Not ready, and why"},
        },
    )
    async def readyz() -> JSONResponse:
        problems = await service.readiness()
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ready", "service": service.name})

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Metrics in Prometheus's text format",
        description="Unauthenticated, like /healthz: Prometheus scrapes it. It names no customer and no order, only "
        "topics, consumer groups, statuses, channels, sources and the SKUs that wait longest (docs/architecture.md, "
        '"Observability").',
        response_class=Response,
        responses={status.HTTP_200_OK: {"content": {"text/plain": {}}, "description": "The exposition"}},
    )
    async def metrics_exposition() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/asyncapi.json", tags=["health"], summary="The AsyncAPI document of this service's topics")
    async def asyncapi() -> dict[str, Any]:
        return service.asyncapi.to_specification().to_jsonable()

    return app
