"""The WebUI's top-level `launch` module, which hands out modules.launch_utils' names. Looked
up on each access, so `launch.args` follows a `launch_utils.args` replaced later."""
from modules import launch_utils

_SHARED = ("args", "python", "run_pip")


def __getattr__(name):
    if name in _SHARED:
        return getattr(launch_utils, name)
    raise AttributeError(f"the fake launch module has no {name!r}")
