"""Every answer a route can give is in its service's OpenAPI document: clients are generated from it, and a
third-party fuzzer reports every status code it gets that the document does not list.

The codes a route can give are read from what it is made of: 401 when it takes a bearer token, 403 when it needs a
role (`require_role`), 422 when FastAPI
validates a parameter or a body, and every `status.HTTP_...` its endpoint (or a function of its module that the
endpoint names) raises. No server is started: each service's app is imported in-process."""

from __future__ import annotations

import importlib
import inspect
import re
from types import ModuleType

import pytest
from fastapi.routing import APIRoute

SERVICES = ("order", "routing", "inventory", "notifications")

_STATUS = re.compile(r"\bstatus\.HTTP_(\d{3})_")
_NAME = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(")


def _service(name: str):
    return importlib.import_module(f"oms_{name}.app").service


def _routes(name: str) -> list[APIRoute]:
    """The shared routes of the runtime and the service's own router (included without a prefix)."""
    own = importlib.import_module(f"oms_{name}.api").router.routes
    return [r for r in [*_service(name).http.routes, *own] if isinstance(r, APIRoute) and r.include_in_schema]


def _raised_by(route: APIRoute) -> set[str]:
    """Status codes the endpoint's own source names, and those of the module-level functions it calls."""
    endpoint = inspect.unwrap(route.endpoint)
    module: ModuleType = inspect.getmodule(endpoint)
    source = inspect.getsource(endpoint)
    codes = set(_STATUS.findall(source))
    for name in set(_NAME.findall(source)):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == module.__name__ and helper is not endpoint:
            codes |= set(_STATUS.findall(inspect.getsource(helper)))
    return codes


def _needs_a_role(route: APIRoute) -> bool:
    """Whether the route depends on `require_role`, which answers 403 to a token without the role."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        if getattr(dependency.call, "__qualname__", "").startswith("require_role."):
            return True
        stack += dependency.dependencies
    return False


def _takes_input(route: APIRoute) -> bool:
    dependant = route.dependant
    params = dependant.path_params + dependant.query_params + dependant.header_params + dependant.cookie_params
    return bool(params or dependant.body_params)


@pytest.mark.parametrize("name", SERVICES)
def test_every_status_code_a_route_can_answer_is_documented(name):
    service = _service(name)
    document = service.http.openapi()
    missing = []
    routes = _routes(name)
    assert len(routes) > 3, "the service's own routes are read too"
    for route in routes:
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            documented = set(operation["responses"])
            expected = _raised_by(route)
            if operation.get("security"):
                expected.add("401")
            if _needs_a_role(route):
                expected.add("403")
            if _takes_input(route):
                expected.add("422")
            missing += [f"{method} {route.path_format}: {code}" for code in sorted(expected - documented)]
    assert not missing, f"{name}: answers its OpenAPI does not document: {missing}"


@pytest.mark.parametrize("name", SERVICES)
def test_every_route_but_health_needs_a_token_and_documents_401(name):
    document = _service(name).http.openapi()
    # /metrics too: Prometheus scrapes it without a token, and it names no customer and no order.
    public = {"/healthz", "/readyz", "/metrics", "/asyncapi.json"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in public:
                assert "security" not in operation, f"{method} {path} is public"
                continue
            if path.startswith("/customer/"):
                # The customer's pages: the signed link is the credential, never a bearer token.
                assert "security" not in operation, f"{method} {path} asks the customer for a token"
                assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == {"lines", "expires", "sig"}
                assert {"403", "410"} <= set(operation["responses"]), f"{method} {path}: forged/expired undocumented"
                continue
            assert operation.get("security") == [{"HTTPBearer": []}], f"{method} {path} takes no token"
            assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }


@pytest.mark.parametrize("name", SERVICES)
def test_readyz_documents_503_with_its_plain_reasons(name):
    document = _service(name).http.openapi()
    not_ready = document["paths"]["/readyz"]["get"]["responses"]["503"]
    schema = not_ready["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(document["components"]["schemas"][schema]["properties"]) == {"status", "problems"}
