"""modules.hypernetworks.hypernetwork, as far as listing goes: `list_hypernetworks(path)`
maps each `.pt` file below `path` (any depth) to its stem, in case-insensitive order."""
from pathlib import Path


def list_hypernetworks(path):
    files = sorted(Path(path).rglob("*.pt"), key=lambda p: str(p).lower()) if path else []
    return {file.stem: str(file) for file in files if file.is_file() and file.stem != "None"}
