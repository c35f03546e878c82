"""modules.script_callbacks, for the three hooks the extension uses: `on_ui_tabs`,
`on_ui_settings`, `on_app_started` register a function; `ui_tabs_callback`,
`ui_settings_callback`, `app_started_callback` are what the WebUI calls to run them.

Registrations are kept in `callback_map` under the WebUI's list names. A registered
function that raises does not stop the others or the caller (the WebUI prints the error
and carries on); here the error is also appended to `reported` as (who, traceback text)."""
import os
import sys
import traceback
from typing import Any, Callable, NamedTuple

_TABS, _SETTINGS, _STARTED = "callbacks_ui_tabs", "callbacks_ui_settings", "callbacks_app_started"
callback_map = {_TABS: [], _SETTINGS: [], _STARTED: []}
reported = []


class _Hook(NamedTuple):
    owner: str              # "<extension>/<file>/<hook>[/<name>]"
    callback: Callable[..., Any]


def _register(hook, callback, name):
    caller = sys._getframe(2).f_code.co_filename   # the script that called on_...()
    owner = "/".join([os.path.basename(os.path.dirname(os.path.dirname(caller))), os.path.basename(caller),
                      hook.removeprefix("callbacks_"), *([name] if name else [])])
    callback_map[hook].append(_Hook(owner, callback))


def _each(hook, *arguments):
    """Call every function registered for `hook`; yield what each returned (None on error)."""
    for entry in list(callback_map[hook]):
        try:
            yield entry.callback(*arguments)
        except Exception:
            reported.append((entry.owner, traceback.format_exc()))
            yield None


def clear_callbacks():
    for registered in callback_map.values():
        registered.clear()


def on_ui_tabs(callback, *, name=None):
    _register(_TABS, callback, name)


def on_ui_settings(callback, *, name=None):
    _register(_SETTINGS, callback, name)


def on_app_started(callback, *, name=None):
    _register(_STARTED, callback, name)


def ui_tabs_callback():
    """Every tab the callbacks offer, as one list of (component, title, elem_id)."""
    return [tab for offered in _each(_TABS) for tab in (offered or [])]


def ui_settings_callback():
    for _ in _each(_SETTINGS):
        pass


def app_started_callback(demo, app):
    for _ in _each(_STARTED, demo, app):
        pass
