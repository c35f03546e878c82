"""Fake of ComfyUI 0.3.64 `folder_paths` (same names and signatures as the real module).

The real module fixes its base path at import from `--base-directory`; the fake starts
empty and `reset(base)` points it at a temporary ComfyUI folder (test-only helper).
"""
from __future__ import annotations

import os

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = ""
models_dir = ""
output_directory = ""
temp_directory = ""
input_directory = ""

MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "hypernetworks", "upscale_models")


def reset(base: str) -> None:
    """Test-only: a fresh ComfyUI folder layout under `base` (models/<kind>, input, output, temp)."""
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = os.path.abspath(base)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    for name in MODEL_FOLDERS:
        folder_names_and_paths[name] = ([os.path.join(models_dir, name)], supported_pt_extensions)
        os.makedirs(os.path.join(models_dir, name), exist_ok=True)
    folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], {"folder"})
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    for d in (output_directory, temp_directory, input_directory):
        os.makedirs(d, exist_ok=True)


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": output_directory, "temp": temp_directory, "input": input_directory}.get(type_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(folder, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path


def get_filename_list(folder_name: str) -> list[str]:
    """Relative paths of the files with a listed extension, recursive, sorted. (The real
    one caches by directory mtimes, which has the same effect: new files show at once.)"""
    folders, extensions = folder_names_and_paths[map_legacy(folder_name)]
    found: set[str] = set()
    for folder in folders:
        for dirpath, subdirs, filenames in os.walk(folder, followlinks=True):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), folder)
                if os.path.splitext(rel)[-1].lower() in extensions or len(extensions) == 0:
                    found.add(rel)
    return sorted(found)


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0) -> tuple[str, str, int, str, str]:
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    os.makedirs(full_output_folder, exist_ok=True)
    counter = 1 + sum(1 for f in os.listdir(full_output_folder) if f.startswith(filename + "_"))
    return full_output_folder, filename, counter, subfolder, filename_prefix
