"""fastapi.security's HTTP Basic pieces, as the adapter's --api-auth guard uses them."""
from typing import NamedTuple, Optional


class HTTPBasicCredentials(NamedTuple):
    """The user name and password a client sent."""
    username: str
    password: str


class HTTPBasic:
    """The Basic-auth scheme; here only a marker handed to `Depends`."""

    def __init__(self, *, scheme_name: Optional[str] = None, realm: Optional[str] = None,
                 description: Optional[str] = None, auto_error: bool = True) -> None:
        self.scheme_name, self.realm, self.auto_error = scheme_name, realm, auto_error

    def __call__(self, request) -> Optional[HTTPBasicCredentials]:
        """FastAPI runs the scheme on every request to read the credentials; the fake app
        serves no requests (tests call the guard with credentials directly)."""
        raise NotImplementedError("the fake FastAPI serves no requests")
