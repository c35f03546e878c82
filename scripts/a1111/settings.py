"""Settings → DreamBooth: the worker Python, where runs and results go, the default preset."""
from __future__ import annotations

from dreambooth_core.config import PRESETS

from . import host

SECTION = ("dreambooth_core", "DreamBooth")


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    def add(key: str, default, label: str, info: str = "", **kw) -> None:
        option = shared.OptionInfo(default, label, section=SECTION, **kw)
        shared.opts.add_option(key, option.info(info) if info else option)

    add(host.WORKER_PYTHON, "", "Python for training",
        f"empty: the worker environment install.py makes in {host.EXT_ROOT / 'worker-venv'}")
    add(host.RUNS_DIR, "", "Folder for training runs (states, samples, logs)", "empty: outputs/dreambooth_core")
    add(host.DEFAULT_PRESET, "lora", "Default preset", component=gr.Dropdown, component_args={"choices": list(PRESETS)})
    add(host.UNLOAD_MODEL, True, "Move the WebUI's model off the GPU while training")
    add(host.ANY_FOLDER, False, "Let clients use folders outside the WebUI's own",
        "off: paths sent to /dreambooth/v1, and image folders typed in the tab while the WebUI is shared "
        "(--listen, --share), must lie in the WebUI's data, model and runs folders (the API cannot change this)",
        restrict_api=True)
    for kind in host.KINDS:
        add(host.FOLDER_OPTIONS[kind], "", f"Folder for trained {kind} files", "empty: the WebUI's own folder")
