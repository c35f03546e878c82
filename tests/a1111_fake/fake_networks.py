"""`networks`, the module of the WebUI's built-in Lora extension, for its file list:
`list_available_networks()` rescans --lora-dir and the old LyCORIS folder (any depth) into
`available_networks`, file stem -> NetworkOnDisk. An entry's `alias` and `sd_version` come
from the kohya-style metadata of a .safetensors file (ss_output_name, ss_base_model_version,
ss_v2); a file without metadata is "Unknown"."""
import json
import os
import struct

from modules import shared

available_networks = {}
_KINDS = (".pt", ".ckpt", ".safetensors")


def _metadata(path):
    if not path.lower().endswith(".safetensors"):
        return {}
    with open(path, "rb") as stream:
        size = struct.unpack("<Q", stream.read(8))[0]
        return json.loads(stream.read(size)).get("__metadata__") or {}


def _family(meta):
    if str(meta.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(meta.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if meta else "Unknown"


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename = name, filename
        self.metadata = _metadata(filename)
        self.alias = self.metadata.get("ss_output_name", name)
        self.sd_version = _family(self.metadata)


def list_available_networks():
    available_networks.clear()
    lora_dir = shared.cmd_opts.lora_dir
    os.makedirs(lora_dir, exist_ok=True)
    for top in (lora_dir, shared.cmd_opts.lyco_dir_backcompat):
        for here, _, names in os.walk(top or "", followlinks=True):
            for file in sorted(names):
                stem, suffix = os.path.splitext(file)
                if suffix.lower() in _KINDS:
                    available_networks[stem] = NetworkOnDisk(stem, os.path.join(here, file))
