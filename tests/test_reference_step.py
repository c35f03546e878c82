"""One DreamBooth step of ours equals diffusers' train_dreambooth.py on the same inputs (issue 17).

The reference's objective with prior preservation: the UNet sees instance and class examples
in one batch, the prediction is split in two halves, each half's MSE is averaged on its own,
and the loss is instance + prior_loss_weight * prior; the prompt is the tokenizer's ids padded
to 77 with no attention mask; AdamW(0.9, 0.999, eps 1e-8, weight decay 1e-2) with the gradient
clipped to a global norm. A change to any of these changes what DreamBooth learns (and how
much the class drifts), so the test compares loss, gradient and optimizer with the reference's
own formula rather than with numbers.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.test_train_loop import class_dir
from tests.test_train_support import Recorder, make_images, tiny_config


def _set_up(tmp_path, **overrides):
    """Our trainer up to its first step (model, data, caches, optimizer), on a tiny SD1."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loop import Trainer

    square = make_images(tmp_path / "square", n=3, size=(64, 64))   # one bucket, as the reference's square crops
    cfg = tiny_config(tmp_path, method="dreambooth", instance_data_dir=str(square), learning_rate=5e-6, lr_scheduler="constant", memory="manual",
                      with_prior_preservation=True, class_data_dir=class_dir(tmp_path, 4), train_batch_size=2, **overrides)
    rec = Recorder()
    trainer = Trainer(cfg, rec, rec.cancel, model=tiny_base_model("sd1"))
    trainer._train = lambda: None   # stop before the steps
    with contextlib.ExitStack() as trainer._scope:
        trainer._run()
    return trainer


@pytest.mark.parametrize("prior_loss_weight", [1.0, 0.3])
def test_one_step_matches_train_dreambooth_objective(tmp_path, prior_loss_weight):
    from diffusers import UNet2DConditionModel

    t = _set_up(tmp_path, prior_loss_weight=prior_loss_weight)
    unet = t.model.unet
    reference = UNet2DConditionModel.from_config(unet.config)
    reference.load_state_dict(unet.state_dict())
    inputs = [t._unet_inputs(role, 0) for role in ("instance", "class")]

    t.method.train(True)
    ours = t._loss(0)
    ours.total.backward()

    # the reference's step on the same latents, noise, timesteps and prompts
    reference.train()
    tok, te = t.model.tokenizers[0], t.model.text_encoders[0]
    prompts = [t.data.prompt(role, 0, item) for role in ("instance", "class") for item in t.data.items(role, 0, 0)]
    ids = tok(prompts, truncation=True, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids)[0]
    assert torch.equal(hidden, torch.cat([x["hidden"] for x in inputs]))
    pred = reference(torch.cat([x["noisy"] for x in inputs]), torch.cat([x["timesteps"] for x in inputs]), hidden,
                     return_dict=False)[0]
    target = torch.cat([x["target"] for x in inputs])
    pred, pred_prior = torch.chunk(pred, 2, dim=0)
    target, target_prior = torch.chunk(target, 2, dim=0)
    instance = F.mse_loss(pred.float(), target.float(), reduction="mean")
    prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    loss = instance + prior_loss_weight * prior
    loss.backward()

    assert ours.total.item() == pytest.approx(loss.item(), rel=1e-6)
    assert ours.instance.item() == pytest.approx(instance.item(), rel=1e-6)
    assert ours.prior.item() == pytest.approx(prior.item(), rel=1e-6)
    theirs = dict(reference.named_parameters())
    for name, p in unet.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-5, atol=1e-9, msg=name)


def test_optimizer_is_train_dreambooths():
    """AdamW with the reference's betas, epsilon and weight decay, over the UNet only, at a
    constant rate without warm-up, its gradient clipped to norm 1 (TrainConfig's defaults)."""
    from dreambooth_core.config import TrainConfig

    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.adam_weight_decay, cfg.max_grad_norm, cfg.lr_scheduler, cfg.lr_warmup_steps) == ("adamw", 1e-2, 1.0, "constant", 0)
    assert (cfg.snr_gamma, cfg.noise_offset, cfg.ema_decay, cfg.train_text_encoder, cfg.prior_loss_weight) == (None, 0.0, None, False, 1.0)


def test_optimizer_groups_carry_the_reference_adamw(tmp_path):
    t = _set_up(tmp_path)
    groups = t.optimizer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["unet"]
    g = groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (5e-6, (0.9, 0.999), 1e-8, 1e-2)
    assert isinstance(t.optimizer.optimizer, torch.optim.AdamW)
    assert sum(p.numel() for p in g["params"]) == sum(p.numel() for p in t.model.unet.parameters())
