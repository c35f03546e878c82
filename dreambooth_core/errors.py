"""Errors a user can act on.

Every failure caused by input (a path, a file, a config value) is raised as a
`UserError` whose message says what was wrong and what to do; the CLI prints it on one
line and exits non-zero, and the host adapters show it in their UI. Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, explained in one actionable sentence."""


class ConfigError(UserError):
    """A wrong key, type or value in a training config."""


class FormatError(UserError):
    """A file that is missing, corrupt, or not the kind of file that was expected."""


class FamilyError(FormatError):
    """A model of a family (or variant) this operation does not support."""


class OutputExistsError(UserError):
    """Refusing to overwrite an existing artifact."""


class OutOfMemory(UserError):
    """The device ran out of memory mid-run; `step`: the step whose saved state a resume
    continues from (the last finished one, or with a fused optimizer step an earlier one; 0: none)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Cancelled(Exception):
    """Raised inside a run when its cancel token is set; the loop saves state first."""
