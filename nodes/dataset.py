"""Load Training Images: a folder of photos (with optional .txt captions) or an IMAGE batch → a dataset."""
from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from dreambooth_core.data.images import scan_images
from dreambooth_core.errors import UserError
from dreambooth_core.paths import text_value
from dreambooth_core.lifecycle import source_signature

from . import host
from .images import batch_digest, save_batch
from .types import DatasetType, TrainingImages

CATEGORY = "DreamBooth"
log = logging.getLogger("dreambooth_core.comfyui")


def images_from_folder(text: str) -> TrainingImages:
    """Every usable image of the folder, checked now (bad files are named and skipped)."""
    if not text_value(text, "folder").strip():
        raise UserError("no image folder given: type a folder name from ComfyUI's input folder (or an absolute path), "
                        "or connect an IMAGE batch")
    folder = host.input_path(text)
    records = scan_images(folder, warn=lambda message: log.warning("DreamBooth: %s", message))
    captioned = sum(1 for r in records if r.caption)
    return TrainingImages(str(folder), len(records), captioned, source_signature(folder, recursive=False))


def images_from_batch(batch: Any) -> TrainingImages:
    """An IMAGE batch written once as PNGs, in a folder named after its pixels."""
    if batch.ndim != 4 or batch.shape[0] == 0:
        raise UserError(f"the IMAGE input holds no pictures (shape {tuple(batch.shape)})")
    digest = batch_digest(batch)
    folder = host.scratch_folder(f"images-{digest}")
    paths = save_batch(batch, folder)
    return TrainingImages(str(folder), len(paths), 0, digest)


class LoadTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DreamBoothLoadTrainingImages",
            display_name="Load Training Images",
            category=CATEGORY,
            description="3-30 photos of your subject: a folder (in ComfyUI's input folder, or an absolute path) "
                        "with optional same-named .txt captions, or an IMAGE batch. Every file is checked now; "
                        "unreadable ones are skipped with a warning in the console.",
            inputs=[
                io.String.Input("folder", default="", placeholder="my_subject  (a folder in ComfyUI/input, or an absolute path)",
                                tooltip="Folder of training images; a .txt file with the same name as an image is its caption"),
                io.Image.Input("images", optional=True, tooltip="Train on this IMAGE batch instead of a folder"),
            ],
            outputs=[DatasetType.Output("dataset", display_name="dataset"),
                     io.Int.Output("count", display_name="count", tooltip="number of usable images")],
        )

    @classmethod
    def execute(cls, folder: str, images: Any = None) -> io.NodeOutput:
        dataset = images_from_batch(images) if images is not None else images_from_folder(folder)
        log.info("DreamBooth: %s", dataset)
        return io.NodeOutput(dataset, dataset.count)

    @classmethod
    def fingerprint_inputs(cls, folder: str = "", images: Any = None) -> str:
        """Run again when the folder's files change (ComfyUI would otherwise reuse the old list)."""
        if images is not None or not isinstance(folder, str) or not folder.strip():
            return ""
        return source_signature(host.input_path(folder), recursive=False)
