"""Fake of the few FastAPI names the adapter uses (the WebUI ships FastAPI; CI does not):
`HTTPException` and `Depends` with FastAPI's signatures, and `FastAPI`, an app that only
records `add_api_route` so a test can call the registered endpoints."""
from typing import Any, Callable, Optional, Sequence


class HTTPException(Exception):
    def __init__(self, status_code: int, detail: Any = None, headers: Optional[dict] = None) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers


class _Depends:
    def __init__(self, dependency: Optional[Callable[..., Any]] = None, *, use_cache: bool = True) -> None:
        self.dependency, self.use_cache = dependency, use_cache


def Depends(dependency: Optional[Callable[..., Any]] = None, *, use_cache: bool = True) -> Any:  # noqa: N802
    return _Depends(dependency, use_cache=use_cache)


class FastAPI:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[Callable[..., Any], Optional[Sequence[Any]]]] = {}

    def add_api_route(self, path: str, endpoint: Callable[..., Any], *, methods: Optional[list] = None,
                      dependencies: Optional[Sequence[Any]] = None, **kwargs: Any) -> None:
        for method in methods or ["GET"]:
            self.routes[(method, path)] = (endpoint, dependencies)
