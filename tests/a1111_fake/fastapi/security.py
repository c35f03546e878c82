"""Fake of fastapi.security's HTTP Basic scheme."""
from dataclasses import dataclass


@dataclass
class HTTPBasicCredentials:
    username: str
    password: str


class HTTPBasic:
    def __init__(self, *, scheme_name=None, realm=None, description=None, auto_error=True) -> None:
        self.realm = realm
