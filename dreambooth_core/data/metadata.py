"""kohya's dataset facts for a LoRA file's `ss_*` metadata (A1111's metadata editor and
model browsers read them): tags per folder, image counts and repeats, buckets, epochs.
Folders are named by their last part only: a file never carries the trainer's paths."""
from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset import TrainingData


def tag_frequency(data: "TrainingData") -> dict[str, dict[str, int]]:
    """{folder: {tag: images whose caption has it}}, tags split at commas and lower-cased, as kohya counts."""
    out: dict[str, Counter] = {}
    for s in data.sets.values():
        for e in s.examples:
            tags = {t.strip().lower() for t in e.prompt.split(",") if t.strip()}
            out.setdefault(e.path.parent.name, Counter()).update(tags)
    return {folder: dict(counts) for folder, counts in out.items()}


def dataset_dirs(data: "TrainingData") -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in data.sets.values():
        for e in s.examples:
            entry = out.setdefault(e.path.parent.name, {"n_repeats": e.repeats, "img_count": 0})
            entry["img_count"] += 1
    return out


def bucket_info(data: "TrainingData") -> dict:
    counts = Counter(e.bucket for e in data.sets["instance"].examples for _ in range(e.repeats))
    return {"buckets": {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(counts.items()))}}


def dataset_facts(data: "TrainingData", micro_steps: int, planned_micro_steps: int) -> dict[str, str]:
    """The ss_* keys kohya writes about the data (counts include repeats, as kohya's do);
    ss_epoch is the epoch reached, ss_num_epochs the run's planned epochs."""
    per_epoch = data.sets["instance"].plan.batches_per_epoch
    facts = {
        "ss_tag_frequency": json.dumps(tag_frequency(data)),
        "ss_dataset_dirs": json.dumps(dataset_dirs(data)),
        "ss_num_train_images": str(sum(e.repeats for e in data.sets["instance"].examples)),
        "ss_num_reg_images": str(sum(e.repeats for e in data.sets["class"].examples)) if data.has_class else "0",
        "ss_bucket_info": json.dumps(bucket_info(data)),
        "ss_num_batches_per_epoch": str(per_epoch),
        "ss_epoch": str(-(-micro_steps // per_epoch)),
        "ss_num_epochs": str(-(-planned_micro_steps // per_epoch)),
    }
    return facts
