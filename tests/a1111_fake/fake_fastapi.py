"""FastAPI, reduced to what the adapter's HTTP routes touch (CI has no FastAPI; the WebUI
does). `HTTPException` and `Depends` take FastAPI's arguments; `FastAPI()` serves nothing:
it keeps each `add_api_route` in `routes`, {(method, path): (endpoint, dependencies)}, so a
test can call an endpoint and its guards directly.

Like FastAPI, adding a route reads the parameter annotations of the endpoint and of every
dependency (through `Depends` defaults) at once: a string annotation, as under
`from __future__ import annotations`, is looked up in the callable's module globals, so a
name imported only inside a function fails here as it fails in the WebUI."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence


class HTTPException(Exception):
    def __init__(self, status_code: int, detail: Any = None, headers: Optional[dict] = None) -> None:
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.detail}"


class _Dependency:
    """What `Depends(...)` hands back: a marker naming the callable to run first."""

    def __init__(self, dependency: Optional[Callable[..., Any]], use_cache: bool) -> None:
        self.dependency = dependency
        self.use_cache = use_cache


def Depends(dependency: Optional[Callable[..., Any]] = None, *, use_cache: bool = True) -> Any:  # noqa: N802
    return _Dependency(dependency, use_cache)


def _resolve_annotations(call: Callable[..., Any]) -> None:
    """Evaluate `call`'s parameter annotations where FastAPI does, then its dependencies'."""
    namespace = getattr(call, "__globals__", {})
    for parameter in inspect.signature(call).parameters.values():
        if isinstance(parameter.annotation, str):
            eval(parameter.annotation, namespace)  # NameError, as in FastAPI, when it is not there
        if isinstance(parameter.default, _Dependency) and parameter.default.dependency is not None:
            _resolve_annotations(parameter.default.dependency)


class FastAPI:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[Callable[..., Any], Optional[Sequence[Any]]]] = {}

    def add_api_route(self, path: str, endpoint: Callable[..., Any], *, methods: Optional[list] = None,
                      dependencies: Optional[Sequence[Any]] = None, **_ignored: Any) -> None:
        _resolve_annotations(endpoint)
        for dependency in dependencies or ():
            if dependency.dependency is not None:
                _resolve_annotations(dependency.dependency)
        for verb in methods if methods else ("GET",):
            self.routes[verb, path] = (endpoint, dependencies)
