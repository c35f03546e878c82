"""Everything the adapter reads from, or does to, the WebUI — the one module that imports `modules.*`.

Folders come from the WebUI's own command line (`--ckpt-dir`, `--lora-dir`,
`--embeddings-dir`, `--hypernetwork-dir`, `--data-dir`) unless Settings → DreamBooth
names another; lists are refreshed with the WebUI's own functions; the loaded model is
moved off the GPU while a run trains and back afterwards. Nothing here ever triggers a
model load (`shared.sd_model` would).
"""
from __future__ import annotations

import os
from pathlib import Path

from dreambooth_core.environment import default_worker_python
from dreambooth_core.errors import UserError
from dreambooth_core.paths import is_inside
from dreambooth_core.registry import KINDS as _KINDS

EXT_ROOT = Path(__file__).resolve().parents[2]
KINDS = tuple(_KINDS)

# Settings (Settings → DreamBooth), registered in settings.py.
WORKER_PYTHON = "dreambooth_core_worker_python"
RUNS_DIR = "dreambooth_core_runs_dir"
DEFAULT_PRESET = "dreambooth_core_default_preset"
UNLOAD_MODEL = "dreambooth_core_unload_model"
ANY_FOLDER = "dreambooth_core_any_folder"   # registered with restrict_api: the API cannot turn it on
SETTING_HINT = ("the WebUI's operator may allow other folders in Settings → DreamBooth "
                "(\"Let clients use folders outside the WebUI's own\"), which the API cannot change")
FOLDER_OPTIONS = {kind: f"dreambooth_core_{kind}_dir" for kind in KINDS}


def option(key: str, default=None):
    """A setting's value; `default` when it was never registered or is empty."""
    from modules import shared

    value = getattr(shared.opts, key, None) if shared.opts is not None else None
    return default if value is None or value == "" else value


def data_path() -> Path:
    from modules import paths

    return Path(paths.data_path)


def runs_dir() -> Path:
    """Where runs (states, samples, logs, uploaded images) live."""
    return Path(option(RUNS_DIR) or data_path() / "outputs" / "dreambooth_core")


def worker_python() -> str:
    return str(option(WORKER_PYTHON) or default_worker_python(EXT_ROOT))


# ---- folders ------------------------------------------------------------------------------

def scanned_folders(kind: str) -> list[Path]:
    """The folders the WebUI lists `kind` files from (each scanned recursively)."""
    from modules import sd_models, shared

    co = shared.cmd_opts
    if kind == "checkpoint":
        found = [co.ckpt_dir, sd_models.model_path]
    elif kind == "lora":
        found = [getattr(co, "lora_dir", None), getattr(co, "lyco_dir_backcompat", None)]
    elif kind == "embedding":
        from modules import sd_hijack

        found = [co.embeddings_dir, *sd_hijack.model_hijack.embedding_db.embedding_dirs]
    elif kind == "hypernetwork":
        found = [co.hypernetwork_dir]
    else:
        raise ValueError(kind)
    return list(dict.fromkeys(Path(f) for f in found if f))


def output_folder(kind: str) -> Path:
    """Where a new `kind` file goes: the setting, else the first folder the WebUI scans."""
    configured = option(FOLDER_OPTIONS[kind])
    if configured:
        return Path(configured)
    folders = scanned_folders(kind)
    if not folders:
        raise UserError(f"the WebUI has no folder for {kind} files: set one in Settings → DreamBooth")
    return folders[0]


def output_folders() -> dict[str, Path]:
    return {kind: output_folder(kind) for kind in KINDS}


def is_scanned(kind: str, path: str | os.PathLike) -> bool:
    return any(is_inside(path, folder) for folder in scanned_folders(kind))


def allowed_roots() -> list[Path]:
    """Folders the HTTP API may read from or write to: the WebUI's data and model folders,
    every folder a result can go to, and the runs folder."""
    from modules import paths

    roots = [data_path(), Path(paths.models_path), runs_dir()]
    for kind in KINDS:
        roots += scanned_folders(kind) + [output_folder(kind)]
    return list(dict.fromkeys(roots))


def any_folder() -> bool:
    """The operator's choice (Settings, never the API) to let clients use any absolute path."""
    return bool(option(ANY_FOLDER, False))


def non_local() -> bool:
    """Whether others can reach this WebUI (--listen, --share, --ngrok, --server-name), as the WebUI decides it."""
    from modules import shared

    return bool(getattr(shared.cmd_opts, "webui_is_non_local", False))


# ---- checkpoints ----------------------------------------------------------------------------

def checkpoint_titles() -> list[str]:
    from modules import sd_models

    return list(sd_models.checkpoints_list)


def current_checkpoint() -> str | None:
    """The title of the WebUI's selected checkpoint, if it is in the list."""
    from modules import shared

    title = getattr(shared.opts, "sd_model_checkpoint", None)
    return title if title in checkpoint_titles() else None


def refresh_checkpoints() -> list[str]:
    from modules import shared

    shared.refresh_checkpoints()
    return checkpoint_titles()


def checkpoint_file(title: str | None) -> str:
    """The file of a checkpoint chosen by title (or any name the WebUI accepts for it)."""
    from modules import sd_models

    if not title:
        raise UserError("choose a base checkpoint first (press 🔄 if the list is empty)")
    info = sd_models.checkpoints_list.get(title) or sd_models.get_closet_checkpoint_match(title)
    if info is None:
        raise UserError(f"checkpoint {title!r} is not in the WebUI's list: press 🔄 and choose it again")
    return info.filename


# ---- hot-loading results --------------------------------------------------------------------

def refresh(kind: str) -> str:
    """Make the WebUI list a new `kind` file now; returns a sentence for the run's notes."""
    from modules import sd_models, shared

    if kind == "checkpoint":
        shared.refresh_checkpoints()
        return "checkpoint list refreshed"
    if kind == "hypernetwork":
        shared.reload_hypernetworks()
        return "hypernetwork list refreshed"
    if kind == "lora":
        try:
            import networks  # the built-in Lora extension's module
        except ImportError:
            return "the built-in Lora extension is not active: enable it to use LoRA files"
        networks.list_available_networks()
        return "LoRA list refreshed"
    if kind == "embedding":
        # Reloading embeddings asks the loaded model for its embedding width; with no model
        # loaded that would load one, so leave it to the WebUI's own check before the next
        # generation (it notices the changed folder).
        if sd_models.model_data.sd_model is None:
            return "embeddings are read when a model is loaded (before the next generation)"
        from modules import sd_hijack

        sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
        return "embeddings reloaded"
    raise ValueError(kind)


# ---- the loaded model -------------------------------------------------------------------------

def free_model():
    """Move the WebUI's loaded model off the GPU for a run; returns it (None if nothing moved)."""
    from modules import sd_models

    model = sd_models.model_data.sd_model
    if model is None or not option(UNLOAD_MODEL, True):
        return None
    sd_models.unload_model_weights(model)
    return model


def restore_model(model) -> None:
    """Put the model moved by `free_model` back, unless the user has loaded another meanwhile."""
    from modules import sd_models

    if model is not None and sd_models.model_data.sd_model is model:
        sd_models.send_model_to_device(model)


# ---- the HTTP API ----------------------------------------------------------------------------

def api_enabled() -> bool:
    """Like the WebUI's own /sdapi routes: only with --api (or --nowebui)."""
    from modules import shared

    return bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))


def api_auth() -> dict[str, str]:
    """--api-auth users and passwords ({} when the API is open)."""
    from modules import shared

    text = getattr(shared.cmd_opts, "api_auth", None) or ""
    return dict(item.split(":", 1) for item in text.split(",") if ":" in item)
