"""DreamBooth for AUTOMATIC1111 / Forge: the one file the WebUI runs from this extension.

It registers the tab, the settings and the HTTP API; the adapter itself lives in
`scripts/a1111/`, loaded here as the package `dreambooth_core_a1111` (a name no other
extension uses, so no `scripts` package can shadow it). It stays loaded across
"Reload UI", and with it the training queue and any run in progress.
"""
import importlib.util
import sys
from pathlib import Path

from modules import script_callbacks

PACKAGE = "dreambooth_core_a1111"
HERE = Path(__file__).resolve().parent


def load_adapter():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    try:
        import dreambooth_core  # noqa: F401  (the WebUI puts the extension folder on sys.path while loading us)
    except ImportError:
        sys.path.append(str(HERE.parent))
    spec = importlib.util.spec_from_file_location(PACKAGE, HERE / "a1111" / "__init__.py",
                                                  submodule_search_locations=[str(HERE / "a1111")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


adapter = load_adapter()
script_callbacks.on_ui_tabs(adapter.ui.on_ui_tabs)
script_callbacks.on_ui_settings(adapter.settings.on_ui_settings)
script_callbacks.on_app_started(adapter.api.on_app_started)
