"""modules.sd_models: the checkpoint list and the loaded model.

- `list_models()` rescans the Stable-diffusion folder and --ckpt-dir (any depth) into
  `checkpoints_list` (title -> CheckpointInfo) and `checkpoint_aliases` (every name the
  WebUI accepts for a checkpoint -> CheckpointInfo). A title is the path below its folder,
  with "/" separators; no hashes are computed, so none is appended.
- `model_data.get_sd_model()` (what `shared.sd_model` reads) loads the selected checkpoint
  the first time; `model_data.sd_model` is what is loaded, without loading anything.
- The fake model is a plain object whose `.device` says where it is ("cuda" or "cpu").

`calls` logs what happened to models: ("load", title), ("to_cpu", model), ("to_device", model).
"""
import os
import threading

from modules import paths, shared

model_path = os.path.abspath(os.path.join(paths.models_path, "Stable-diffusion"))
checkpoints_list = {}
checkpoint_aliases = {}
calls = []
_SUFFIXES = (".ckpt", ".safetensors")


def _below(file, folder):
    """`file` relative to `folder` with "/" separators, or None when it is not inside."""
    if not folder:
        return None
    relative = os.path.relpath(os.path.abspath(file), os.path.abspath(folder))
    return None if relative.startswith("..") else relative.replace(os.sep, "/")


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.name = (_below(filename, shared.cmd_opts.ckpt_dir) or _below(filename, model_path)
                     or os.path.basename(filename))
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(self.name.replace("/", "_"))[0]
        self.title = self.name
        self.ids = [self.model_name, self.title, self.name, self.name_for_extra]

    def register(self):
        checkpoints_list[self.title] = self
        checkpoint_aliases.update(dict.fromkeys(self.ids, self))


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    files = set()
    for folder in (model_path, shared.cmd_opts.ckpt_dir):
        for here, _, names in os.walk(folder or "", followlinks=True):
            files.update(os.path.join(here, n) for n in names
                         if n.lower().endswith(_SUFFIXES) and ".vae." not in n)
    for file in sorted(files, key=str.lower):
        CheckpointInfo(file).register()


def get_closet_checkpoint_match(search_string):
    """By any accepted name; failing that, the shortest title containing the text; else None."""
    if not search_string:
        return None
    if search_string in checkpoint_aliases:
        return checkpoint_aliases[search_string]
    containing = [info for title, info in checkpoints_list.items() if search_string in title]
    return min(containing, key=lambda info: len(info.title), default=None)


def _selected():
    """The checkpoint Settings names, else the first listed one."""
    chosen = checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if chosen is None and checkpoints_list:
        chosen = next(iter(checkpoints_list.values()))
    if chosen is None:
        raise FileNotFoundError("the fake WebUI has no checkpoint to load")
    return chosen


class _Model:
    """A stand-in model: knows its checkpoint and which device it sits on."""

    def __init__(self, info):
        self.sd_checkpoint_info = info
        self.device = "cuda"


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self._loaded_once = False    # after the first load, reading never loads again
        self._loading = threading.Lock()

    def get_sd_model(self):
        with self._loading:
            if self.sd_model is None and not self._loaded_once:
                info = _selected()
                calls.append(("load", info.title))
                self.sd_model, self._loaded_once = _Model(info), True
        return self.sd_model


model_data = SdModelData()


def _move(model, device, tag):
    calls.append((tag, model))
    model.device = device


def unload_model_weights(sd_model=None, info=None):
    """Moves the model (the loaded one if none is given) to the CPU."""
    model = sd_model if sd_model is not None else model_data.sd_model
    if model is not None:
        _move(model, "cpu", "to_cpu")
    return sd_model


def send_model_to_device(m):
    _move(m, "cuda", "to_device")
