"""What `run_training` returns (kept free of heavy imports, like the events)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..events import Artifact


@dataclass
class RunResult:
    status: str                      # "completed" | "cancelled"
    run_dir: Path
    step: int                        # optimizer steps done
    artifacts: list[Artifact] = field(default_factory=list)
    loss: float | None = None        # the last step's loss

    @property
    def outputs(self) -> list[Artifact]:
        """The final artifacts (what the user asked for)."""
        return [a for a in self.artifacts if a.final]
