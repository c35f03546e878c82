"""ComfyUI IMAGE tensors ([batch, height, width, 3] floats in 0..1) to and from files."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


def load_images(paths: list[str]) -> "torch.Tensor":
    """One IMAGE batch from image files; images of another size are resized to the first's."""
    import numpy as np
    import torch
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in paths]
    size = pictures[0].size
    arrays = [np.asarray(p if p.size == size else p.resize(size, Image.LANCZOS), dtype=np.float32) / 255.0 for p in pictures]
    return torch.from_numpy(np.stack(arrays))


def to_pil(batch: "torch.Tensor") -> list["Image.Image"]:
    """PIL images of an IMAGE batch (RGB; a 4th channel is kept as alpha)."""
    import numpy as np
    from PIL import Image

    arrays = (batch.detach().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if arrays.ndim == 3:  # a single image without a batch axis
        arrays = arrays[None]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}
    out = []
    for a in arrays:
        if a.shape[-1] not in mode:
            raise ValueError(f"an IMAGE with {a.shape[-1]} channels: expected 1, 3 or 4")
        out.append(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, mode[a.shape[-1]]))
    return out


def batch_digest(batch: "torch.Tensor") -> str:
    """Identity of an IMAGE batch's pixels (same pictures → same digest)."""
    data = batch.detach().cpu().contiguous()
    h = hashlib.sha256(repr(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()[:16]


def save_batch(batch: "torch.Tensor", folder: Path) -> list[Path]:
    """Write an IMAGE batch as numbered PNGs (lossless, so training sees the same pixels)."""
    paths = []
    for i, picture in enumerate(to_pil(batch)):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            tmp = folder / f".{i:04d}.png.tmp"
            picture.save(tmp, format="PNG")
            tmp.replace(path)
        paths.append(path)
    return paths
