"""Evaluate: subject fidelity, prompt fidelity, prior drift and diversity of any LoRA,
embedding, hypernetwork or checkpoint in ComfyUI's lists, ours or another trainer's.

It runs `dreambooth-core evaluate` in the worker's Python (like the utility nodes): two
models and an encoder never sit in ComfyUI's memory, and Cancel stops it.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from dreambooth_core.paths import text_value

from . import host
from .utility import CATEGORY, run_command

AUTO = "(first in clip_vision)"
ARTIFACT_FOLDERS = ("loras", "embeddings", "hypernetworks", "checkpoints")


def _names(kind: str) -> list[str]:
    try:
        return folder_paths.get_filename_list(kind)
    except KeyError:   # a ComfyUI without that model kind
        return []


class Evaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        artifacts = [f"{kind}/{name}" for kind in ARTIFACT_FOLDERS for name in _names(kind)]
        return io.Schema(
            node_id="DreamBoothEvaluate", display_name="Evaluate", category=CATEGORY, is_output_node=True,
            description="How well a LoRA / embedding / hypernetwork / checkpoint learned a subject: a fixed set of images "
                        "(the subject, the subject in new contexts, the plain class) is drawn with it and scored against "
                        "the photos and the base model's own class images by a CLIP or DINOv2 file from models/clip_vision.",
            inputs=[
                io.Combo.Input("artifact", options=artifacts),
                io.Combo.Input("base_model", options=host.checkpoint_names()),
                io.String.Input("instance_folder", default="", tooltip="The subject's photos: a folder under ComfyUI's input folder"),
                io.String.Input("token", default="", tooltip="The trigger word; empty: from the file (an embedding's name)"),
                io.String.Input("class_noun", default="", tooltip="The subject's class, e.g. dog; empty: from the file"),
                io.Combo.Input("encoder", options=[AUTO, *_names("clip_vision")], default=AUTO,
                               tooltip="A full CLIP file also measures prompt fidelity; an image-only one or DINOv2 does not"),
                io.Int.Input("images", default=4, min=2, max=16, tooltip="Images per prompt"),
                io.Int.Input("steps", default=25, min=1, max=150),
            ],
            outputs=[io.String.Output("report", display_name="report"),
                     io.Float.Output("subject_fidelity", display_name="subject_fidelity"),
                     io.Float.Output("prompt_fidelity", display_name="prompt_fidelity",
                                     tooltip="-1 when the encoder has no text tower"),
                     io.Float.Output("prior_drift", display_name="prior_drift")],
        )

    @classmethod
    def execute(cls, artifact: str, base_model: str, instance_folder: str, token: str, class_noun: str,
                encoder: str, images: int, steps: int) -> io.NodeOutput:
        kind, _, name = artifact.partition("/")
        args = ["evaluate", str(host.model_path(kind, name)), "--base", str(host.model_path("checkpoints", base_model)),
                "--instance", str(host.input_path(instance_folder, "instance_folder")),
                "--token", text_value(token, "token").strip(), "--class-noun", text_value(class_noun, "class_noun").strip(),
                "--images", str(images), "--steps", str(steps)]
        found = host.model_path("clip_vision", encoder) if encoder != AUTO else host.encoder_file()
        if found is not None:
            args += ["--encoder", str(found)]
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "report.json"
            run_command([*args, "--report", str(out)], "the evaluation")
            report = json.loads(out.read_text(encoding="utf-8"))
        scores = report["scores"]
        text = "\n".join([f"{Path(report['artifact']).name} ({report['kind']}), scored by {report['encoder']}",
                          *(f"{k.replace('_', ' ')}: {v:.3f}" for k, v in scores.items())])
        return io.NodeOutput(text, scores["subject_fidelity"], scores.get("prompt_fidelity", -1.0), scores["prior_drift"],
                             ui={"text": [text]})
