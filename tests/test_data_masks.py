"""Masked training: a mask beside a photo weights the loss per latent pixel, with
`masked_loss_floor` outside it; no mask (or a floor of 1) changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from test_train_support import make_images, tiny_config, train


def masked_folder(tmp_path, where: str = "beside"):
    folder = make_images(tmp_path / "photos", n=2, size=(64, 64))
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255                                   # the subject: the left half
    for name in ("img0", "img1"):
        if where == "beside":
            Image.fromarray(half).save(folder / f"{name}.mask.png")
        else:
            (folder / "masks").mkdir(exist_ok=True)
            Image.fromarray(half).save(folder / "masks" / f"{name}.png")
    return folder


def losses(run_dir) -> list[float]:
    from dreambooth_core.train.run_dir import RunDir

    return [row["loss"] for row in RunDir(run_dir).read_loss()]


def record_mse(monkeypatch):
    import dreambooth_core.train.loop as loop

    calls = []
    original = loop.per_example_mse

    def spy(pred, target, weights=None):
        calls.append((pred.detach(), target.detach(), weights))
        return original(pred, target, weights)

    monkeypatch.setattr(loop, "per_example_mse", spy)
    return calls


@pytest.mark.parametrize("where", ["beside", "folder"])
def test_a_mask_weights_the_loss_only_outside_it(tmp_path, monkeypatch, where):
    from dreambooth_core.data.images import scan_images

    folder = masked_folder(tmp_path, where)
    records = scan_images(folder, min_size=1)
    assert [r.path.name for r in records] == ["img0.png", "img1.png"]     # masks are not training images
    assert all(r.mask is not None for r in records)
    calls = record_mse(monkeypatch)
    cfg = tiny_config(tmp_path, instance_data_dir=str(folder), masked_loss_floor=0.2, max_train_steps=2)
    train(cfg)
    for pred, target, weights in calls:
        w = weights[:, 0]
        half = w.shape[-1] // 2
        assert torch.all(w[..., :half] == 1.0) and torch.allclose(w[..., half:], torch.full_like(w[..., half:], 0.2))
        error = (pred.float() - target.float()) ** 2
        inside = error[..., :half]                 # inside the mask: the plain error, untouched
        outside = error[..., half:]
        weighted = error * weights
        assert torch.equal(weighted[..., :half], inside)
        torch.testing.assert_close(weighted[..., half:], 0.2 * outside)


def test_a_floor_of_one_and_no_mask_train_the_same(tmp_path):
    masked = masked_folder(tmp_path / "m")
    plain = make_images(tmp_path / "p" / "photos", n=2, size=(64, 64))
    a, _, _ = train(tiny_config(tmp_path / "m", instance_data_dir=str(masked), masked_loss_floor=1.0, max_train_steps=3))
    b, _, _ = train(tiny_config(tmp_path / "p", instance_data_dir=str(plain), max_train_steps=3))
    c, _, _ = train(tiny_config(tmp_path / "c", instance_data_dir=str(masked), masked_loss_floor=0.0, max_train_steps=3))
    assert losses(a.run_dir) == losses(b.run_dir)
    assert losses(c.run_dir) != losses(b.run_dir)


def test_the_mask_is_cut_and_mirrored_with_the_photo():
    from dreambooth_core.data.dataset import numpy_rng, prepare_image

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    image = np.stack([mask, mask // 2, mask // 3], axis=-1)   # the photo's red channel is the mask
    for seed in range(4):
        prepared = prepare_image(Image.fromarray(image), (64, 64), center_crop=False, flip=bool(seed % 2),
                                 rng=numpy_rng(seed), mask=Image.fromarray(mask))
        red = (prepared.pixels[0] + 1) * 127.5
        torch.testing.assert_close(prepared.mask[0] * 255, red, atol=1e-3, rtol=0)
