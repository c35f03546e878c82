"""Fake of modules/paths.py (re-exports the folders of paths_internal)."""
from modules.paths_internal import data_path, extensions_builtin_dir, extensions_dir, models_path, script_path  # noqa: F401
