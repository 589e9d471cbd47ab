"""The HTTP surface every service shares: health, readiness, bearer-token principals, request spans."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry.trace import SpanKind

from . import telemetry
from .settings import ApiGrant, Role

if TYPE_CHECKING:
    from .service import Service

_bearer = HTTPBearer(auto_error=False, description="A token from OMS_API_TOKENS")


def _grant(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiGrant:
    """What the request's bearer token grants; 401 without a known token."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    grant = request.app.state.service.settings.grant(credentials.credentials)
    if grant is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown bearer token", {"WWW-Authenticate": "Bearer"})
    return grant


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """The principal behind the request's bearer token; 401 without a known token."""
    return _grant(request, credentials).principal


Principal = Annotated[str, Depends(principal)]


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


def create_app(service: Service, description: str) -> FastAPI:
    app = FastAPI(
        title=f"OMS {service.name} service",
        version="1.0.0",
        description=description,
        lifespan=service.lifespan,
    )
    app.state.service = service

    @app.middleware("http")
    async def trace_requests(request: Request, call_next: Any) -> Any:
        if request.url.path in ("/healthz", "/readyz"):
            return await call_next(request)
        carrier = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
        with telemetry.tracer().start_as_current_span(
            f"{request.method} {request.url.path}",
            context=telemetry.propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.url.path},
        ) as span:
            response = await call_next(request)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service.name}

    @app.get("/readyz", tags=["health"], summary="The broker and the database are reachable")
    async def readyz() -> JSONResponse:
        problems = await service.readiness()
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ready", "service": service.name})

    @app.get("/asyncapi.json", tags=["health"], summary="The AsyncAPI document of this service's topics")
    async def asyncapi() -> dict[str, Any]:
        return service.asyncapi.to_specification().to_jsonable()

    return app
