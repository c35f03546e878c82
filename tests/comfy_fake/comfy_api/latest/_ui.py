"""Fake of `comfy_api.latest._ui` (ComfyUI 0.3.64): PreviewImage saves a batch to the temp folder."""
from __future__ import annotations

import os
import random

import folder_paths

from ._io import FolderType


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=type.value)


class PreviewImage:
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        import numpy as np
        from PIL import Image

        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_temp_directory())
        self.values = []
        for i, tensor in enumerate(image):
            arr = np.clip(255.0 * tensor.cpu().numpy(), 0, 255).astype(np.uint8)
            name = f"{filename}_{counter + i:05}_.png"
            Image.fromarray(arr).save(os.path.join(folder, name))
            self.values.append(SavedResult(name, subfolder, FolderType.temp))
        self.animated = animated

    def as_dict(self):
        return {"images": self.values, "animated": (self.animated,)}


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}
