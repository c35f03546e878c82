"""Point the fake WebUI modules at a test's folder, and load an extension as the WebUI does.

    with fake_webui.installed():                 # the fakes (and the fake gradio) importable
        webui = fake_webui.setup(tmp_path)        # a fresh WebUI whose data folder is tmp_path
        fake_webui.load_extension(REPO_ROOT)      # runs scripts/*.py like modules/scripts.py

The fakes stand in for the AUTOMATIC1111 WebUI (v1.10.1) modules the adapter uses, under
the same module, attribute and function names, with just enough behaviour to be observed:
folders are scanned for real, a model "loads" when `shared.sd_model` is touched (as the
real lazy property does), and callbacks swallow and record exceptions as the real ones do.
A subprocess started with PYTHONPATH=FAKE_DIR gets them through `sitecustomize.py`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

FAKE_DIR = Path(__file__).resolve().parent
if str(FAKE_DIR.parent) not in sys.path:  # host_fakes, when a subprocess starts here
    sys.path.append(str(FAKE_DIR.parent))
from host_fakes import FakeHostModules  # noqa: E402

# The WebUI's module names -> our fakes (None: a package with only submodules)
WEBUI_MODULES = {
    "modules": None,
    "modules.paths": "fake_paths.py",
    "modules.paths_internal": "fake_paths_internal.py",
    "modules.textual_inversion": None,
    "modules.textual_inversion.textual_inversion": "fake_textual_inversion.py",
    "modules.hypernetworks": None,
    "modules.hypernetworks.hypernetwork": "fake_hypernetwork.py",
    "modules.script_callbacks": "fake_script_callbacks.py",
    "modules.launch_utils": "fake_launch_utils.py",
    "modules.shared": "fake_shared.py",
    "modules.sd_hijack": "fake_sd_hijack.py",
    "modules.options": "fake_options.py",
    "modules.sd_models": "fake_sd_models.py",
    "launch": "fake_launch.py",
    "networks": "fake_networks.py",  # the built-in Lora extension's module
    "gradio": "fake_gradio.py",
    "fastapi": "fake_fastapi.py",
    "fastapi.security": "fake_fastapi_security.py",
}
# plus the adapter package the extension loads, purged with them
FAKES = FakeHostModules(FAKE_DIR, WEBUI_MODULES, extra=("dreambooth_core_a1111",))


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Make the fakes (and fake_trainer) importable for the duration; leave no trace after."""
    sys.path.insert(0, str(FAKE_DIR))
    try:
        with FAKES.installed():
            yield
    finally:
        sys.path.remove(str(FAKE_DIR))


def setup(root: Path, **cmd_opts) -> SimpleNamespace:
    """A fresh WebUI with its data folder at `root` (command-line options may be overridden)."""
    from modules import launch_utils, options, paths, paths_internal, script_callbacks, sd_hijack, sd_models, shared

    import networks

    root = Path(root)
    models = root / "models"
    for module in (paths_internal, paths):
        module.script_path = module.data_path = str(root)
        module.models_path = str(models)
    paths_internal.default_output_dir = str(root / "outputs")
    defaults = dict(data_dir=str(root), models_dir=None, ckpt=str(root / "model.ckpt"), ckpt_dir=None,
                    lora_dir=str(models / "Lora"), lyco_dir_backcompat=str(models / "LyCORIS"),
                    embeddings_dir=str(root / "embeddings"), hypernetwork_dir=str(models / "hypernetworks"),
                    ui_settings_file=str(root / "config.json"), api=False, nowebui=False, api_auth=None,
                    skip_install=False, no_download_sd_model=True, freeze_settings=False)
    shared.cmd_opts = argparse.Namespace(**{**defaults, **cmd_opts})
    shared.opts = options.Options({"sd_model_checkpoint": options.OptionInfo(None, "Stable Diffusion checkpoint")}, set())
    shared.hypernetworks = {}
    sd_models.model_path = str(models / "Stable-diffusion")
    sd_models.checkpoints_list.clear()
    sd_models.checkpoint_aliases.clear()
    sd_models.model_data = sd_models.SdModelData()
    sd_models.calls.clear()
    sd_hijack.model_hijack = sd_hijack.StableDiffusionModelHijack()
    script_callbacks.clear_callbacks()
    script_callbacks.reported.clear()
    launch_utils.args = argparse.Namespace(ui_settings_file=shared.cmd_opts.ui_settings_file, data_dir=str(root),
                                           skip_install=False, skip_prepare_environment=False)
    launch_utils.recorded.clear()
    networks.available_networks.clear()
    folders = {"checkpoint": Path(sd_models.model_path), "lora": Path(shared.cmd_opts.lora_dir),
               "embedding": Path(shared.cmd_opts.embeddings_dir), "hypernetwork": Path(shared.cmd_opts.hypernetwork_dir)}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(root=root, folders=folders, shared=shared, sd_models=sd_models, networks=networks,
                           script_callbacks=script_callbacks, sd_hijack=sd_hijack)


def load_extension(ext_root: Path) -> list:
    """Run the extension's top-level scripts/*.py as modules/scripts.py:load_scripts does:
    each under its file name, with the extension folder first on sys.path while it loads
    (unlike the WebUI, an error propagates)."""
    loaded = []
    scripts = Path(ext_root) / "scripts"
    for filename in sorted(os.listdir(scripts)):
        path = scripts / filename
        if not path.is_file() or path.suffix.lower() != ".py":
            continue
        saved = sys.path
        sys.path = [str(ext_root)] + sys.path
        try:
            spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded.append(module)
        finally:
            sys.path = saved
    return loaded


def start(root: Path, ext_root: Path, **cmd_opts) -> SimpleNamespace:
    """`setup`, then what the WebUI does at start for an extension: load its scripts and run
    the settings callbacks (which add its options)."""
    webui = setup(root, **cmd_opts)
    load_extension(ext_root)
    webui.script_callbacks.ui_settings_callback()
    return webui
