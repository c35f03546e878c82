"""Fake of modules/script_callbacks.py: registration with the real signatures, and the
runners the WebUI calls. As in the WebUI, an exception inside a callback is reported and
swallowed — here it is also kept in `reported`, so a test can see it."""
import dataclasses
import inspect
import os
import traceback


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


callback_map = {name: [] for name in ("callbacks_app_started", "callbacks_ui_tabs", "callbacks_ui_settings",
                                      "callbacks_before_ui", "callbacks_script_unloaded", "callbacks_model_loaded")}
reported = []   # (callback name, traceback text)


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"{os.path.basename(os.path.dirname(os.path.dirname(filename)))}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f'/{name}'
    callbacks.append(ScriptCallback(filename, fun, callback_name))


def report_exception(c, job):
    reported.append((c.name, traceback.format_exc()))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def app_started_callback(demo, app):
    for c in callback_map['callbacks_app_started']:
        try:
            c.callback(demo, app)
        except Exception:
            report_exception(c, 'app_started_callback')


def ui_tabs_callback():
    res = []
    for c in callback_map['callbacks_ui_tabs']:
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, 'ui_tabs_callback')
    return res


def ui_settings_callback():
    for c in callback_map['callbacks_ui_settings']:
        try:
            c.callback()
        except Exception:
            report_exception(c, 'ui_settings_callback')


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')
