"""Test-wide setup: never touch the network, keep torch to the machine's cores."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

# The tests' models are tiny: one thread avoids thread-pool overhead that dominates them
# (10-40x on a loaded 2-core machine). DREAMBOOTH_TEST_THREADS overrides.
# Runs (and their worker subprocesses) are told the same, instead of choosing by the machine's load.
os.environ["DREAMBOOTH_CORE_THREADS"] = os.environ.get("DREAMBOOTH_TEST_THREADS", "1")
torch.set_num_threads(int(os.environ["DREAMBOOTH_CORE_THREADS"]))
