"""Fake of modules/paths_internal.py: the WebUI's folders (set by fake_webui.setup)."""
import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file
