"""What a hostile client sends as a name or a path, and a canary folder outside every root
that must be byte-identical after each refusal. Shared by the front ends' tests."""
from __future__ import annotations

import os
from pathlib import Path

# Each must be refused where a name (output_name, token, class_noun) becomes a file name.
HOSTILE_NAMES = ["../x", "/abs/x", "/../../abs/x", ".", "..", "a/../../x", "~/x", "~root/x", "a\x00b", ".hidden",
                 "n" * 200, "a\\..\\x"]
NOT_TEXT = [5, ["a"], {"a": 1}]   # where a path (a string) belongs


class Canary:
    """A folder outside the host's roots, shaped like a run folder and a models folder, and
    the ways a client could name it."""

    def __init__(self, base: Path):
        self.base = base
        self.folder = base / "canary"
        for rel, data in {"config.json": b"{}", "model.safetensors": b"weights", "state/trainable.safetensors": b"s",
                          "samples/0.png": b"png", "datasets/x/0.png": b"img"}.items():
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / rel).write_bytes(data)
        self.before = self.snapshot()
        self.base_entries = sorted(os.listdir(base))

    def snapshot(self) -> dict[str, bytes | None]:
        return {str(p.relative_to(self.folder)): (p.read_bytes() if p.is_file() else None)
                for p in sorted(self.folder.rglob("*"))}

    def paths(self, root: Path, home_relative: str = "~/canary") -> list[object]:
        """Paths that lead from `root` (a folder the front end allows) to the canary."""
        link = root / "innocent_link"
        if not link.is_symlink():
            link.symlink_to(self.folder, target_is_directory=True)
        rel = os.path.relpath(self.folder, root)
        return [rel, str(self.folder), "/../.." + str(self.folder), f"a/../{rel}", home_relative, "~root/x", str(link),
                str(self.folder) + "\x00", *NOT_TEXT]

    def assert_intact(self) -> None:
        assert self.snapshot() == self.before, "the canary folder outside the roots changed"
        assert sorted(os.listdir(self.base)) == self.base_entries, "something appeared beside the roots"
