"""Utility nodes over the formats layer: convert a model, convert / merge / extract LoRAs.

Each runs the matching `dreambooth-core` command in a separate Python (the worker's), so
loading two full models never holds ComfyUI's memory and a crash cannot take it down;
Cancel stops the command, and the output appears atomically or not at all.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from dreambooth_core.errors import OutputExistsError, UserError
from dreambooth_core.jobs.worker import worker_env
from dreambooth_core.paths import safe_name, text_value

from . import host

CATEGORY = "DreamBooth/utilities"
NONE = "(none)"
POLL_SECONDS = 0.2
DTYPES = ["fp16", "bf16", "fp32"]


def run_command(args: list[str], what: str) -> None:
    """`python -m dreambooth_core ARGS` in the worker Python; its one-line error becomes the node's."""
    python = host.worker_python()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty command can never block on it
        try:
            proc = subprocess.Popen([python, "-m", "dreambooth_core", *args], stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=worker_env())
        except OSError as exc:
            raise UserError(f"cannot start {python} for {what} ({exc.strerror or exc}); {host.SETUP_HINT}") from exc
        try:
            while proc.poll() is None:
                host.check_interrupted()
                time.sleep(POLL_SECONDS)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        err.seek(0)
        lines = [line for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if proc.returncode == 1 and lines and lines[-1].startswith("error: "):
        raise UserError(lines[-1].removeprefix("error: "))
    if proc.returncode != 0:
        tail = " | ".join(lines[-3:]) or "no output"
        hint = f"; {host.SETUP_HINT}" if "No module named" in tail else ""
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}): {tail}{hint}")


def output_name_or(typed: object, default: str) -> str:
    """The typed output_name (checked to be text), or `default` when it is empty."""
    return text_value(typed, "output_name").strip() or default


def output_file(kind: str, name: object, overwrite: bool, folder: Path | None = None) -> Path:
    """The new file in the first folder of `kind` (or `folder`), refused early if it would replace one."""
    stem = safe_name(safe_name(name, "output_name").removesuffix(".safetensors"), "output_name")
    folder = folder or host.publish_folder(kind)
    path = folder / f"{stem}.safetensors"
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path.name} already exists in {folder}: choose another output_name or turn on overwrite")
    return path


def diffusers_folders() -> list[str]:
    """Diffusers model folders (holding model_index.json) under ComfyUI's diffusers paths."""
    found = set()
    for root in folder_paths.get_folder_paths("diffusers"):
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            if "model_index.json" in files:
                found.add(os.path.relpath(dirpath, root))
    return sorted(found)


def diffusers_path(name: str) -> Path:
    for root in folder_paths.get_folder_paths("diffusers"):
        candidate = Path(root) / name
        if (candidate / "model_index.json").is_file():
            return candidate
    raise UserError(f"no diffusers model folder {name!r} in {folder_paths.get_folder_paths('diffusers')[0]}")


def _name_output(tooltip: str) -> io.String.Output:
    return io.String.Output("file_name", display_name="file_name", tooltip=tooltip)


def _naming_inputs() -> list[io.Input]:
    return [io.String.Input("output_name", default="", tooltip="File name of the result (without extension); empty: derived"),
            io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name")]


class ConvertModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        sources = [f"checkpoints/{n}" for n in host.checkpoint_names() if n.endswith(".safetensors") or n.endswith(".ckpt")]
        sources += [f"diffusers/{n}" for n in diffusers_folders()]
        return io.Schema(
            node_id="DreamBoothConvertModel", display_name="Convert Model", category=CATEGORY, is_output_node=True,
            description="A checkpoint becomes a diffusers folder (in models/diffusers) and a diffusers folder becomes a "
                        "single .safetensors checkpoint (in models/checkpoints). Exact and offline.",
            inputs=[io.Combo.Input("source", options=sources), io.Combo.Input("dtype", options=DTYPES, default="fp16"),
                    *_naming_inputs()],
            outputs=[_name_output("The new checkpoint file or diffusers folder")],
        )

    @classmethod
    def execute(cls, source: str, dtype: str, output_name: str, overwrite: bool) -> io.NodeOutput:
        kind, _, name = source.partition("/")
        if kind == "checkpoints":
            src = host.model_path("checkpoints", name)
            stem = safe_name(output_name_or(output_name, Path(name).stem), "output_name")
            out = Path(folder_paths.get_folder_paths("diffusers")[0]) / stem
            if out.exists() and not overwrite:
                raise OutputExistsError(f"{out.name} already exists in {out.parent}: choose another output_name or turn on overwrite")
            out.parent.mkdir(parents=True, exist_ok=True)
        else:
            src = diffusers_path(name)
            out = output_file("checkpoint", output_name_or(output_name, Path(name).name), overwrite)
        run_command(["convert", str(src), str(out), "--dtype", dtype, *(["--overwrite"] if overwrite else [])], "the conversion")
        return io.NodeOutput(out.name)


class ConvertLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DreamBoothConvertLoRA", display_name="Convert LoRA", category=CATEGORY, is_output_node=True,
            description="Rewrite a LoRA in kohya layout (what ComfyUI and A1111 load fully; peft/diffusers files only "
                        "log 'lora key not loaded' there) or in peft layout for diffusers. Tensors and alphas are kept exactly.",
            inputs=[
                io.Combo.Input("lora", options=folder_paths.get_filename_list("loras")),
                io.Combo.Input("to", options=["kohya", "peft"], default="kohya",
                               tooltip="kohya: into the loras folder; peft: into output/dreambooth/peft"),
                io.Combo.Input("base_model", options=[NONE, *host.checkpoint_names()], default=NONE,
                               tooltip="The model the LoRA belongs to, for models of non-standard size"),
                *_naming_inputs(),
            ],
            outputs=[_name_output("The converted LoRA")],
        )

    @classmethod
    def execute(cls, lora: str, to: str, base_model: str, output_name: str, overwrite: bool) -> io.NodeOutput:
        src = host.model_path("loras", lora)
        name = output_name_or(output_name, f"{Path(lora).stem}-{to}")
        if to == "kohya":
            out = output_file("lora", name, overwrite)
        else:
            folder = host.runs_root() / "peft"
            folder.mkdir(parents=True, exist_ok=True)
            out = output_file("lora", name, overwrite, folder)
        args = ["lora", "convert", str(src), str(out), "--to", to]
        if base_model != NONE:
            args += ["--base", str(host.model_path("checkpoints", base_model))]
        run_command(args + (["--overwrite"] if overwrite else []), "the LoRA conversion")
        return io.NodeOutput(out.name)


class MergeLoRA(io.ComfyNode):
    SLOTS = 3

    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = folder_paths.get_filename_list("loras")
        slots = []
        for i in range(1, cls.SLOTS + 1):
            slots += [io.Combo.Input(f"lora_{i}", options=loras if i == 1 else [NONE, *loras], default=None if i == 1 else NONE),
                      io.Float.Input(f"strength_{i}", default=1.0, min=-10.0, max=10.0, step=0.01)]
        return io.Schema(
            node_id="DreamBoothMergeLoRA", display_name="Merge LoRA into Checkpoint", category=CATEGORY, is_output_node=True,
            description="Bake up to three LoRAs into a base checkpoint and save it as a new checkpoint.",
            inputs=[io.Combo.Input("checkpoint", options=host.checkpoint_names()), *slots,
                    io.Combo.Input("dtype", options=DTYPES, default="fp16"), *_naming_inputs()],
            outputs=[_name_output("The merged checkpoint, as CheckpointLoaderSimple lists it")],
        )

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, output_name: str, overwrite: bool, **slots) -> io.NodeOutput:
        base = host.model_path("checkpoints", checkpoint)
        out = output_file("checkpoint", output_name_or(output_name, f"{Path(checkpoint).stem}-merged"), overwrite)
        args = ["lora", "merge", "--base", str(base), "--dtype", dtype]
        for i in range(1, cls.SLOTS + 1):
            name = slots.get(f"lora_{i}", NONE)
            if name and name != NONE:
                args += ["--lora", f"{host.model_path('loras', name)}:{slots.get(f'strength_{i}', 1.0)}"]
        run_command(args + [str(out)] + (["--overwrite"] if overwrite else []), "the merge")
        return io.NodeOutput(out.name)


class ExtractLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        checkpoints = host.checkpoint_names()
        return io.Schema(
            node_id="DreamBoothExtractLoRA", display_name="Extract LoRA", category=CATEGORY, is_output_node=True,
            description="A LoRA approximating the difference between a fine-tuned checkpoint (e.g. from Train DreamBooth) "
                        "and its base, by truncated SVD; saved into the loras folder.",
            inputs=[io.Combo.Input("base", options=checkpoints), io.Combo.Input("tuned", options=checkpoints),
                    io.Int.Input("rank", default=32, min=1, max=1024),
                    io.Int.Input("conv_rank", default=0, min=0, max=1024, tooltip="Also 3x3 convolutions at this rank; 0: off"),
                    *_naming_inputs()],
            outputs=[_name_output("The extracted LoRA, as LoraLoader lists it")],
        )

    @classmethod
    def execute(cls, base: str, tuned: str, rank: int, conv_rank: int, output_name: str, overwrite: bool) -> io.NodeOutput:
        if base == tuned:
            raise UserError("base and tuned are the same checkpoint: pick the fine-tuned model as tuned")
        out = output_file("lora", output_name_or(output_name, f"{Path(tuned).stem}-extracted"), overwrite)
        args = ["lora", "extract", "--base", str(host.model_path("checkpoints", base)),
                "--tuned", str(host.model_path("checkpoints", tuned)), "--rank", str(rank)]
        if conv_rank > 0:
            args += ["--conv-rank", str(conv_rank)]
        run_command(args + [str(out)] + (["--overwrite"] if overwrite else []), "the extraction")
        return io.NodeOutput(out.name)


UTILITY_NODES = [ConvertModel, ConvertLoRA, MergeLoRA, ExtractLoRA]
