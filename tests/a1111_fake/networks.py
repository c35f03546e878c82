"""Fake of extensions-builtin/Lora/networks.py: the list of LoRA files (as `import networks`
sees it once the built-in Lora extension has loaded)."""
import json
import os
import struct

from modules import shared

available_networks = {}
available_network_aliases = {}
forbidden_network_aliases = {}


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.metadata = {}
        if filename.endswith(".safetensors"):
            with open(filename, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self.metadata = json.loads(f.read(n)).get("__metadata__", {})
        self.alias = self.metadata.get("ss_output_name", name)
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            self.sd_version = "SDXL"
        elif str(self.metadata.get("ss_v2", "")) == "True":
            self.sd_version = "SD2"
        elif self.metadata:
            self.sd_version = "SD1"
        else:
            self.sd_version = "Unknown"


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    for folder in (shared.cmd_opts.lora_dir, shared.cmd_opts.lyco_dir_backcompat):
        for root, _, files in os.walk(folder, followlinks=True):
            for fn in sorted(files):
                if os.path.splitext(fn)[1].lower() not in (".pt", ".ckpt", ".safetensors"):
                    continue
                name = os.path.splitext(fn)[0]
                entry = NetworkOnDisk(name, os.path.join(root, fn))
                available_networks[name] = entry
                if entry.alias in available_network_aliases:
                    forbidden_network_aliases[entry.alias.lower()] = 1
                available_network_aliases[name] = entry
                available_network_aliases[entry.alias] = entry
