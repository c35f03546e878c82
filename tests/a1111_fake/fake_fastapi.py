"""FastAPI, reduced to what the adapter's HTTP routes touch (CI has no FastAPI; the WebUI
does). `HTTPException` and `Depends` take FastAPI's arguments; `FastAPI()` serves nothing:
it keeps each `add_api_route` in `routes`, {(method, path): (endpoint, dependencies)}, so a
test can call an endpoint and its guards directly."""
from __future__ import annotations

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


class FastAPI:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[Callable[..., Any], Optional[Sequence[Any]]]] = {}

    def add_api_route(self, path: str, endpoint: Callable[..., Any], *, methods: Optional[list] = None,
                      dependencies: Optional[Sequence[Any]] = None, **_ignored: Any) -> None:
        for verb in methods if methods else ("GET",):
            self.routes[verb, path] = (endpoint, dependencies)
