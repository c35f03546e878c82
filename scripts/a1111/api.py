"""HTTP API on the WebUI's own app, for scripting like its /sdapi routes (enabled by --api):

    POST /dreambooth/v1/runs                  {"preset": "lora", "config": {TrainConfig keys}} → the run's status
    GET  /dreambooth/v1/runs                  every run this session knows
    GET  /dreambooth/v1/runs/{id}             status, loss curve, samples, log, and where results went
    GET  /dreambooth/v1/runs/{id}/events?since=N   events from position N on, and the next position
    POST /dreambooth/v1/runs/{id}/cancel      cancel (the run saves a resumable state)

`config.base_model` may name a checkpoint as the WebUI lists it, or be a path. Every path
must lie inside the WebUI's data or model folders, a result folder, or the runs folder;
`output_dir` defaults to the runs folder. With --api-auth the same users apply.
`RunsApi` is plain Python (tested without a server); `mount` binds it to FastAPI.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Dict

from dreambooth_core.config import PATH_KEYS, check_client_limits, client_paths, load_config
from dreambooth_core.lifecycle import check_destination
from dreambooth_core.errors import OutputExistsError, UserError
from dreambooth_core.paths import OutsideRoots, contained

from . import host
from .session import Session

PREFIX = "/dreambooth/v1"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RunsApi:
    def __init__(self, session: Session) -> None:
        self.session = session

    def routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        return [("POST", "/runs", self.start), ("GET", "/runs", self.list_runs), ("GET", "/runs/{run_id}", self.status),
                ("GET", "/runs/{run_id}/events", self.events), ("POST", "/runs/{run_id}/cancel", self.cancel)]

    def start(self, body: Dict[str, Any]) -> dict:
        settings = body.get("config", {}) if isinstance(body, dict) else None
        if not isinstance(settings, dict) or set(body) - {"config", "preset"} or \
                not isinstance(body.get("preset", ""), (str, type(None))):
            raise ApiError(400, 'send {"preset": NAME (optional), "config": {TrainConfig keys}}')
        settings = dict(settings)
        settings.setdefault("output_dir", str(host.runs_dir()))
        base = settings.get("base_model")
        listed = None   # a checkpoint the WebUI itself lists (also one given by --ckpt from elsewhere) is the operator's
        if isinstance(base, str) and base and not base.startswith("~") and not Path(base).is_absolute():
            settings["base_model"] = listed = host.checkpoint_file(base)  # a checkpoint as the WebUI lists it
        for key in PATH_KEYS:
            value = settings.get(key)
            if value in (None, "") or (key == "resume_from" and value == "latest") or (key == "base_model" and listed):
                continue
            try:
                settings[key] = str(contained(value, key, host.allowed_roots(), base=host.data_path(),
                                              anywhere=host.any_folder(), setting_hint=host.SETTING_HINT))
            except OutsideRoots as exc:
                raise ApiError(403, str(exc)) from None
        config = check_client_limits(load_config(preset=body.get("preset"), overrides=settings))
        for what, value in client_paths(config):   # concept folders, also those a dataset TOML names
            if what == "base_model" and listed:
                continue
            try:
                contained(value, what, host.allowed_roots(), base=host.data_path(), anywhere=host.any_folder(),
                          setting_hint=host.SETTING_HINT)
            except OutsideRoots as exc:
                raise ApiError(403, str(exc)) from None
        if config.overwrite:   # replacing a file in the WebUI's folders is the operator's choice, made in the tab
            config.overwrite = False
            check_destination(config, host.output_folders())
            config.overwrite = True
        return self.session.manager.status_dict(self.session.start(config))

    def list_runs(self) -> dict:
        return {"runs": [self.session.manager.status_dict(job.id) for job in self.session.manager.list()]}

    def status(self, run_id: str) -> dict:
        return self.session.view(self._known(run_id))

    def events(self, run_id: str, since: int = 0) -> dict:
        events = self.session.job(self._known(run_id)).events_since(max(0, since))
        return {"events": [e.to_dict() for e in events], "next": max(0, since) + len(events)}

    def cancel(self, run_id: str) -> dict:
        self.session.cancel(self._known(run_id))
        return self.session.manager.status_dict(run_id)

    def _known(self, run_id: str) -> str:
        try:
            self.session.job(run_id)
        except UserError as exc:
            raise ApiError(404, str(exc)) from None
        return run_id


def call(endpoint: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an endpoint, turning input errors into ApiError with the right HTTP status."""
    try:
        return endpoint(*args, **kwargs)
    except OutputExistsError as exc:
        raise ApiError(409, str(exc)) from None
    except UserError as exc:
        raise ApiError(400, str(exc)) from None


def mount(app, api: RunsApi) -> None:
    """Add the routes to the WebUI's FastAPI app (the WebUI's --api-auth users, if any)."""
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic

    users = host.api_auth()
    dependencies = None
    if users:
        import secrets

        # no annotation: FastAPI would look a string annotation up in this module's globals,
        # where a name imported in this function is not (the Depends default says it all)
        def authorise(credentials=Depends(HTTPBasic())) -> bool:
            expected = users.get(credentials.username)
            if expected is not None and secrets.compare_digest(credentials.password, expected):
                return True
            raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

        dependencies = [Depends(authorise)]

    def http(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(endpoint)
        def handler(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(endpoint, *args, **kwargs)
            except ApiError as exc:
                raise HTTPException(exc.status, str(exc)) from None
        return handler

    for method, path, endpoint in api.routes():
        app.add_api_route(PREFIX + path, http(endpoint), methods=[method], dependencies=dependencies)


def on_app_started(demo, app) -> None:
    if host.api_enabled():
        from .session import get_session

        mount(app, RunsApi(get_session()))
