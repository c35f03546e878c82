"""Everything the nodes ask of ComfyUI, in one place: folders, memory, interrupts,
progress on the node, status messages to the web extension, and applying results to
MODEL/CLIP. The rest of the package speaks dreambooth_core; only this module speaks ComfyUI.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import server

from dreambooth_core.errors import UserError
from dreambooth_core.paths import contained
from dreambooth_core.registry import KINDS

# Artifact kinds (dreambooth_core.events.Artifact.kind) → ComfyUI folder names.
KIND_FOLDERS = {name: kind.comfy_folder for name, kind in KINDS.items()}
STATUS_EVENT = "dreambooth.status"     # the web extension listens for this
RUN_MODE_ENV = "DREAMBOOTH_CORE_RUN_MODE"          # "worker" (default) or "in_process"
WORKER_PYTHON_ENV = "DREAMBOOTH_CORE_WORKER_PYTHON"  # default: ComfyUI's own Python
ANY_FOLDER_ENV = "DREAMBOOTH_CORE_ANY_FOLDER"        # "1": nodes may read absolute paths outside ComfyUI's folders
SETUP_HINT = (f"install this node pack's requirements.txt into ComfyUI's Python, or set {WORKER_PYTHON_ENV} "
              "to a Python that has diffusers, peft and accelerate")


# ---- folders -------------------------------------------------------------------------

def checkpoint_names() -> list[str]:
    return folder_paths.get_filename_list("checkpoints")


def model_path(folder: str, name: str) -> Path:
    """The file `name` from ComfyUI's list `folder`, or a UserError saying where to put it."""
    path = folder_paths.get_full_path(folder, name) if name else None
    if path is None:
        where = folder_paths.get_folder_paths(folder)[0]
        if not folder_paths.get_filename_list(folder):
            what = "a Stable Diffusion 1.x, 2.x or XL .safetensors" if folder == "checkpoints" else "a file"
            raise UserError(f"no file in ComfyUI's {folder} folder: put {what} in {where} and press R (refresh) in the browser")
        raise UserError(f"{name!r} is not in ComfyUI's {folder} list: pick one from the list (press R after adding files to {where})")
    return Path(path)


def encoder_file() -> Path | None:
    """The first CLIP / DINOv2 file in models/clip_vision, to measure runs with (dreambooth_core.evaluate)."""
    from dreambooth_core.evaluate.encoders import find_encoder

    try:
        return find_encoder(folder_paths.get_folder_paths("clip_vision"))
    except KeyError:   # a ComfyUI without that model kind
        return None


def publish_folder(kind: str) -> Path:
    """The first folder of the kind's list: where a new file appears in the loaders at once."""
    folder = Path(folder_paths.get_folder_paths(KIND_FOLDERS[kind])[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def allowed_roots() -> list[Path]:
    """What a node may read: ComfyUI's input, output and temp folders and its model folders."""
    roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory()]
    for kind in (*KIND_FOLDERS.values(), "diffusers"):
        roots += folder_paths.get_folder_paths(kind)
    return list(dict.fromkeys(Path(r) for r in roots))


def any_folder() -> bool:
    """The operator's switch (set where ComfyUI is started, never in a workflow) for absolute paths anywhere."""
    return os.environ.get(ANY_FOLDER_ENV, "") == "1"


def input_path(text: object, what: str = "folder") -> Path:
    """A folder under ComfyUI's input folder (relative) or another of its folders (absolute);
    elsewhere only when the operator set DREAMBOOTH_CORE_ANY_FOLDER=1."""
    return contained(text, what, allowed_roots(), base=folder_paths.get_input_directory(), anywhere=any_folder(),
                     setting_hint=f"start ComfyUI with {ANY_FOLDER_ENV}=1 to allow other folders")


def runs_root() -> Path:
    """Training runs live in ComfyUI's output folder, beside the user's images."""
    return Path(folder_paths.get_output_directory()) / "dreambooth"


def scratch_folder(name: str) -> Path:
    """A folder in ComfyUI's temp directory (wiped when ComfyUI starts)."""
    path = Path(folder_paths.get_temp_directory()) / "dreambooth" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- memory, interrupts, where training runs -------------------------------------------

def free_memory() -> None:
    """Unload ComfyUI's models so training has the GPU (ComfyUI reloads them when needed)."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if Cancel was pressed."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, comfy.model_management.InterruptProcessingException)


def run_mode() -> str:
    mode = os.environ.get(RUN_MODE_ENV, "worker")
    if mode not in ("worker", "in_process"):
        raise UserError(f"{RUN_MODE_ENV}={mode!r}: use worker or in_process")
    return mode


def worker_python() -> str:
    return os.environ.get(WORKER_PYTHON_ENV) or sys.executable


# ---- progress and status on the node ----------------------------------------------------

class NodeProgress:
    """The node's progress bar (which also raises on Cancel) and a status line for the
    web extension: phase, step, loss, ETA and the recent loss values."""

    MIN_INTERVAL = 0.25  # seconds between status messages

    def __init__(self, node_id: str | None, total: int):
        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(max(1, total))
        self._sent = 0.0

    def update(self, step: int, total: int, preview: Any = None) -> None:
        """Advance the bar (raises InterruptProcessingException after Cancel); `preview` is a PIL image."""
        self.bar.update_absolute(step, max(1, total), ("JPEG", preview, 512) if preview is not None else None)

    def status(self, text: str, force: bool = False, **data: Any) -> None:
        now = time.monotonic()
        if not force and now - self._sent < self.MIN_INTERVAL:
            return
        self._sent = now
        prompt_server = server.PromptServer.instance
        if prompt_server is not None and self.node_id is not None:
            prompt_server.send_sync(STATUS_EVENT, {"node": self.node_id, "text": text, **data}, prompt_server.client_id)


# ---- results applied to the graph's objects ----------------------------------------------

def apply_lora(model: Any, clip: Any, path: Path, strength: float) -> tuple[Any, Any]:
    """What LoraLoader does, from our file: clones of MODEL and CLIP with the LoRA patched in."""
    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    return comfy.sd.load_lora_for_models(model, clip, lora, strength, strength)


def apply_hypernetwork(model: Any, path: Path, strength: float) -> Any:
    """What HypernetworkLoader does: a clone of MODEL with attn1/attn2 patches."""
    from comfy_extras.nodes_hypernetwork import load_hypernetwork_patch

    patch = load_hypernetwork_patch(str(path), strength)
    if patch is None:
        raise UserError(f"ComfyUI could not read the hypernetwork {path.name} (see its log)")
    patched = model.clone()
    patched.set_model_attn1_patch(patch)
    patched.set_model_attn2_patch(patch)
    return patched


def load_checkpoint(path: Path) -> tuple[Any, Any, Any]:
    """What CheckpointLoaderSimple does: MODEL, CLIP and VAE of a checkpoint file."""
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
    return model, clip, vae
