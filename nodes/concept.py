"""Concept: the subject's rare token, its class, the prompts, and prior preservation.

Concept nodes chain through `previous` (several subjects, or a subject plus a style, in
one run); new widgets are appended after the old ones, so saved workflows keep their values."""
from __future__ import annotations

from comfy_api.latest import io

from .types import CAPTION_DEFAULTS, Concept, ConceptType, DatasetType, TrainingImages

CATEGORY = "DreamBooth"


class ConceptNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DreamBoothConcept",
            display_name="Concept",
            category=CATEGORY,
            description="What to teach: a rare token (zwx, sks) bound to your subject, the class it belongs to "
                        "(dog, person), the prompts, and prior preservation (the DreamBooth paper's guard against "
                        "the model forgetting what an ordinary member of the class looks like).",
            inputs=[
                io.String.Input("token", default="zwx", tooltip="A rare word that will mean your subject"),
                io.String.Input("class_noun", default="", placeholder="dog, person, car ...",
                                tooltip="What kind of thing the subject is"),
                io.String.Input("instance_prompt", default="a photo of {token} {class_noun}",
                                tooltip="Caption of your images ({token} and {class_noun} are filled in); .txt captions override it"),
                io.String.Input("class_prompt", default="a photo of {class_noun}",
                                tooltip="Prompt for the class images of prior preservation"),
                io.Boolean.Input("prior_preservation", default=True,
                                 tooltip="Also train on the model's own images of the class, so it keeps the class"),
                io.Int.Input("num_class_images", default=0, min=0, max=10000,
                             tooltip="Class images to use (missing ones are generated once and cached); 0: the preset's number"),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.01, max=10.0, step=0.05,
                               tooltip="Weight of the class images' loss (the paper's lambda)"),
                DatasetType.Input("class_images", optional=True,
                                  tooltip="Your own class images (otherwise generated from the class prompt)"),
                io.Int.Input("repeats", default=1, min=1, max=1000,
                             tooltip="Times each image is seen per epoch (balances a small set against a large one)"),
                io.String.Input("caption_extension", default="", placeholder=".txt",
                                tooltip="Caption files beside the images; empty: .txt, then .caption"),
                io.Boolean.Input("shuffle_caption", default=False, tooltip="Shuffle comma-separated caption tags each step"),
                io.Int.Input("keep_tokens", default=0, min=0, max=75, tooltip="Leading tags never shuffled or dropped"),
                io.Float.Input("caption_dropout_rate", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance a step trains this image with an empty caption"),
                io.Float.Input("tag_dropout_rate", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance each tag is left out of a step's caption"),
                DatasetType.Input("images", optional=True,
                                  tooltip="This concept's own images (from Load Training Images); otherwise the Train node's dataset"),
                ConceptType.Input("previous", optional=True,
                                  tooltip="Another Concept: both are trained in one run (chain as many as you like)"),
            ],
            outputs=[ConceptType.Output("concept", display_name="concept")],
        )

    @classmethod
    def execute(cls, token: str, class_noun: str, instance_prompt: str, class_prompt: str, prior_preservation: bool,
                num_class_images: int, prior_loss_weight: float, class_images: TrainingImages | None = None,
                repeats: int = 1, images: TrainingImages | None = None, previous: Concept | None = None,
                **captions: object) -> io.NodeOutput:
        changed = tuple((key, captions[key]) for key, default in CAPTION_DEFAULTS.items()
                        if captions.get(key, default) != default)
        return io.NodeOutput(Concept(token, class_noun, instance_prompt, class_prompt, prior_preservation,
                                     num_class_images, prior_loss_weight, class_images, images, repeats, changed, previous))
