"""The evaluation report for any artifact, ours or another tool's (a kohya LoRA, an A1111
embedding, a fine-tuned checkpoint): applied to the base the way a host applies it, drawn
over the fixed evaluation set, scored against the instance photos and the base's own class images.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from .evalset import DEFAULT_IMAGES, EVAL_SEED
from .session import Session, find_scorer

APPLIED_KINDS = ("lora", "embedding", "hypernetwork", "checkpoint")


@dataclass
class ArtifactReport:
    artifact: str
    kind: str
    encoder: str
    prompt: str
    class_prompt: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"artifact:   {self.artifact} ({self.kind})", f"scored by:  {self.encoder}",
                 f"prompts:    {self.prompt!r}, class {self.class_prompt!r}"]
        lines += [f"{k.replace('_', ' '):20s}{v:.3f}" for k, v in self.scores.items()]
        if "prompt_fidelity" not in self.scores:
            lines.append("prompt fidelity     - (the encoder has no text tower: give a full CLIP file)")
        return "\n".join(lines)


def trigger_words(path: Path, kind: str) -> tuple[str, str]:
    """(token, class noun) from the file's `modelspec.trigger_phrase` ("zwx dog"), else ("", "");
    an embedding's token is its file stem, as the hosts name it."""
    from ..fileio import read_safetensors_metadata

    phrase = ""
    if path.suffix == ".safetensors":
        phrase = read_safetensors_metadata(path).get("modelspec.trigger_phrase", "")
    words = phrase.split()
    token = path.stem if kind == "embedding" else (words[0] if words else "")
    return token, " ".join(words[1:]) if len(words) > 1 else ""


def native_resolution(model) -> int:
    """What the UNet was built for, as diffusers' pipelines default (the family's for real models; 64 px for the toy)."""
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    return int(model.unet.config.sample_size) * vae_scale


def evaluate_artifact(artifact: str | Path, base: str | Path, instance_dir: str | Path, encoder: str = "",
                      token: str = "", class_noun: str = "", images: int = DEFAULT_IMAGES, steps: int = 25,
                      guidance_scale: float = 7.5, sampler: str = "dpmpp_2m", resolution: int | None = None,
                      seed: int = EVAL_SEED, weight: float = 1.0) -> ArtifactReport:
    from ..apply import apply_artifact
    from ..formats.inspect import inspect_path
    from ..models.load import load_base_model
    from .evalset import EvalSet

    artifact, base = Path(artifact), Path(base)
    kind = inspect_path(artifact).kind
    if kind not in APPLIED_KINDS:
        raise UserError(f"{artifact.name} is a {kind} file: evaluate takes a LoRA, embedding, hypernetwork or checkpoint")
    found_token, found_class = trigger_words(artifact, kind)
    token, class_noun = token or found_token, class_noun or found_class
    if not token or not class_noun:
        raise UserError(f"{artifact.name} does not say its trigger word and class: give --token and --class-noun "
                        "(e.g. --token zwx --class-noun dog)")
    scorer = find_scorer(encoder, str(base))
    if scorer is None:
        raise UserError("evaluate needs an encoder: give --encoder with a CLIP or DINOv2 .safetensors file "
                        "(e.g. one from ComfyUI's models/clip_vision)")
    model = load_base_model(base)
    evalset = EvalSet.build(f"a photo of {token} {class_noun}", f"a photo of {class_noun}", token, scorer.contexts,
                            scorer.controls, images_per_prompt=images, seed=seed, steps=steps, guidance_scale=guidance_scale,
                            sampler=sampler, resolution=resolution or native_resolution(model))
    with tempfile.TemporaryDirectory() as folder:
        session = Session.start(scorer, evalset, instance_dir, Path(folder), model, model_id=str(base))
    trained = apply_artifact(model, kind, artifact, token=token if kind == "embedding" else None, weight=weight)
    return ArtifactReport(str(artifact), kind, scorer.name, evalset.subject, evalset.plain, session.measure(trained))
