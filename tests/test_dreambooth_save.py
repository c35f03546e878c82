"""A DreamBooth checkpoint carries its frozen parts exactly as the base holds them (issue 17).

A bf16 run holds the VAE and the untrained text encoder in bf16 to save memory; saved from
there at the default fp16, 87 % of their weights came out rounded to bf16 (8 bits) instead
of the base's own: a published model whose text encoder differs from the base it was
trained on, though it never trained.
"""
from __future__ import annotations

import pytest
import torch

from tests.test_train_support import Recorder, tiny_config


def _saved_and_base(tmp_path, base_dtype: str, base_format: str, **overrides):
    from dreambooth_core.models.load import load_base_model
    from dreambooth_core.models.save import save_diffusers, save_single_file
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loop import Trainer

    base = tiny_base_model("sd1", seed=3)
    save = save_single_file if base_format == "single-file" else save_diffusers
    path = save(base, tmp_path / ("base.safetensors" if base_format == "single-file" else "base"), dtype=base_dtype)
    cfg = tiny_config(tmp_path, method="dreambooth", base_model=str(path), mixed_precision="bf16", memory="manual",
                      learning_rate=1e-3, max_train_steps=1, **overrides)
    rec = Recorder()
    result = Trainer(cfg, rec, rec.cancel).run()
    published = next(a.path for a in result.artifacts if a.kind == "checkpoint")
    return load_base_model(published, dtype="fp32"), load_base_model(path, dtype="fp32")


@pytest.mark.parametrize("base_dtype,base_format", [("fp32", "single-file"), ("fp16", "diffusers")])
def test_bf16_run_saves_untrained_parts_as_the_base_holds_them(tmp_path, base_dtype, base_format):
    saved, base = _saved_and_base(tmp_path, base_dtype, base_format)   # saved at the default fp16
    for name, ours, theirs in (("vae", saved.vae, base.vae), ("text_encoder", saved.text_encoders[0], base.text_encoders[0])):
        mine, orig = ours.state_dict(), theirs.state_dict()
        for key, value in orig.items():
            assert torch.equal(mine[key], value.half().float()), f"{name}.{key} is not the base's"
    # the UNet trained and is saved from its fp32 weights
    assert any(not torch.equal(a, b.half().float()) for a, b in zip(saved.unet.state_dict().values(), base.unet.state_dict().values()))


def test_a_trained_text_encoder_is_saved_as_trained(tmp_path):
    saved, base = _saved_and_base(tmp_path, "fp32", "single-file", train_text_encoder=True)
    changed = [k for k, v in base.text_encoders[0].state_dict().items()
               if not torch.equal(saved.text_encoders[0].state_dict()[k], v.half().float())]
    assert changed
