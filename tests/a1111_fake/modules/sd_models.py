"""Fake of modules/sd_models.py: the checkpoint list, and a model that loads lazily and moves
between devices. `calls` records what was done to the model, for tests to read."""
import os
import re
import threading

from modules import paths, shared

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))
checkpoints_list = {}
checkpoint_aliases = {}
calls = []   # ("load", title) | ("to_cpu", model) | ("to_device", model)


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        abs_ckpt_dir = os.path.abspath(shared.cmd_opts.ckpt_dir) if shared.cmd_opts.ckpt_dir is not None else None
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if abs_ckpt_dir and abspath.startswith(abs_ckpt_dir):
            name = abspath.replace(abs_ckpt_dir, '')
        elif abspath.startswith(model_path):
            name = abspath.replace(model_path, '')
        else:
            name = os.path.basename(filename)
        if name.startswith("\\") or name.startswith("/"):
            name = name[1:]
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = None
        self.sha256 = None
        self.shorthash = None
        self.title = name
        self.short_title = self.name_for_extra
        self.ids = [self.model_name, self.title, name, self.name_for_extra]

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self


def _walk(folder, extensions):
    for root, _, files in os.walk(folder, followlinks=True):
        for fn in sorted(files):
            if os.path.splitext(fn)[1].lower() in extensions:
                yield os.path.join(root, fn)


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    found = []
    for folder in [model_path, shared.cmd_opts.ckpt_dir]:
        if folder and os.path.isdir(folder):
            found += [f for f in _walk(folder, (".ckpt", ".safetensors")) if ".vae." not in os.path.basename(f)]
    for filename in sorted(set(found), key=str.lower):
        CheckpointInfo(filename).register()


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    checkpoint_info = checkpoint_aliases.get(search_string, None)
    if checkpoint_info is not None:
        return checkpoint_info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    return None


def select_checkpoint():
    info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint, None)
    if info is not None:
        return info
    if not checkpoints_list:
        raise FileNotFoundError("No checkpoints found.")
    return next(iter(checkpoints_list.values()))


class FakeSdModel:
    def __init__(self, info):
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.device = "cuda"
        self.lowvram = False

    def to(self, device):
        self.device = str(device)
        return self


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()

    def get_sd_model(self):
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            with self.lock:
                if self.sd_model is None:
                    load_model()
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    info = checkpoint_info or select_checkpoint()
    calls.append(("load", info.title))
    model_data.set_sd_model(FakeSdModel(info))
    model_data.was_loaded_at_least_once = True
    return model_data.sd_model


def send_model_to_cpu(m):
    if m is not None:
        calls.append(("to_cpu", m))
        m.to("cpu")


def send_model_to_device(m):
    calls.append(("to_device", m))
    m.to("cuda")


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    checkpoint_info = info or select_checkpoint()
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model
    return load_model(checkpoint_info)
