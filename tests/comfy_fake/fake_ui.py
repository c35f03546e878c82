"""Our stand-in for ComfyUI's `comfy_api.latest.ui` (0.3.64): a preview writes each image
of a batch as a PNG into the temp folder and describes them for the front end."""
from __future__ import annotations

import secrets
from pathlib import Path

import folder_paths

from ._io import FolderType


class PreviewImage:
    def __init__(self, image, cls=None, **_ignored):
        import numpy as np
        from PIL import Image

        stem = f"preview_{secrets.token_hex(3)}"
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(stem, folder_paths.get_temp_directory())
        self.images = []
        for n, tensor in enumerate(image):
            pixels = (tensor.cpu().numpy().clip(0.0, 1.0) * 255.0).astype(np.uint8)
            filename = f"{name}_{counter + n:05}.png"
            Image.fromarray(pixels).save(Path(folder) / filename)
            self.images.append({"filename": filename, "subfolder": subfolder, "type": FolderType.temp.value})

    def as_dict(self) -> dict:
        return {"images": self.images, "animated": (False,)}
