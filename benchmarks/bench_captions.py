"""Shuffled captions: cache an embedding per caption variant, or encode each step's caption?

Prints (1) how many of a run's steps would find their shuffled caption already encoded
(a cache per variant only pays off on repeats), and (2) what encoding one caption costs
on SD1.5's full-size CLIP-L text encoder (random weights, same architecture and cost), for
one 77-token chunk and for a 3-chunk (225-token) caption.

    PYTHONPATH=. python benchmarks/bench_captions.py [--steps 2000] [--tags 20] [--images 20]
"""
from __future__ import annotations

import argparse
import time


def variant_hits(steps: int, tags: int, images: int) -> int:
    from dreambooth_core.data.captions import CaptionOptions, vary_caption
    from dreambooth_core.data.dataset import numpy_rng

    opts = CaptionOptions(shuffle=True, keep_tokens=1, tag_dropout_rate=0.1)
    captions = [", ".join(["zwx"] + [f"tag{i}_{k}" for k in range(tags)]) for i in range(images)]
    seen, hits = set(), 0
    for m in range(steps):
        variant = vary_caption(captions[m % images], opts, numpy_rng(0, "caption", m))
        hits += variant in seen
        seen.add(variant)
    return hits


def encode_seconds(chunks: int, repeats: int = 5) -> float:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77)).eval()
    ids = torch.randint(0, 49408, (1, 77))
    with torch.no_grad():
        te(ids)
        start = time.perf_counter()
        for _ in range(repeats):
            for _ in range(chunks):
                te(ids)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--tags", type=int, default=20)
    ap.add_argument("--images", type=int, default=20)
    a = ap.parse_args()
    hits = variant_hits(a.steps, a.tags, a.images)
    print(f"steps {a.steps}, {a.images} captions of {a.tags} tags shuffled: {hits} cache hits ({hits / a.steps:.1%})")
    for chunks in (1, 3):
        print(f"CLIP-L encode, {chunks} chunk(s): {encode_seconds(chunks) * 1000:.0f} ms per caption (CPU)")


if __name__ == "__main__":
    main()
