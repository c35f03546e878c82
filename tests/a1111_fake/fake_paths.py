"""modules.paths: the folder names, taken over from modules.paths_internal."""
from modules.paths_internal import data_path, models_path, script_path  # noqa: F401
