"""The one training loop: every method, every family, one or several processes.

`Trainer.run` goes: config → run folder → base model → class images → method set-up →
data and caches → optimizer → (resume) → steps → save → validate → done, emitting typed
events all the way. Gradients are averaged over processes explicitly after backward
(rather than by wrapping models in DDP), which works the same for a UNet, peft layers,
hypernetwork hooks and embedding rows, and keeps the run with N processes equal to the
run with one process and N times the batch.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
import traceback
import contextlib
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import TrainConfig
from ..errors import Cancelled, OutOfMemory, UserError
from ..events import Artifact, CancelToken, Done, Error, Evaluation, Event, EventSink, Log, Preview, Progress, Started
from ..data.dataset import LatentStats, TrainingData, derive_seed, example_generator
from .ema import WeightAverage, split_state
from .loss import dreambooth_loss, min_snr_weights, per_example_mse, sample_noise, sample_timestep, training_target
from .packed_convs import packed_frozen_convolutions, packing_cost
from .prompts import PromptCache, common_word_warning
from .result import RunResult
from .run_dir import RunDir
from .state import (TrainingState, check_compatible, load_state, restore_rng, resume_settings, rng_states, save_state, saved_step,
                    state_dirs)

if TYPE_CHECKING:
    from ..methods.base import Method
    from ..models.base import BaseModel

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator(config: TrainConfig):
    """An Accelerator for this run. accelerate keeps process-wide singletons, and a host may
    train several times in one process with different precision: reset the per-run parts
    (never the process group of a distributed launch)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine
    # without a GPU: accelerate only forms a gloo process group when told it is on CPU;
    # otherwise every process would silently train alone.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    try:
        acc = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps, cpu=cpu)
    except ValueError as exc:
        raise UserError(f"mixed_precision={config.mixed_precision!r} is not available here ({exc}); use 'no' or 'bf16' on a CPU") from exc
    if acc.device.type == "cpu" and config.mixed_precision == "fp16":
        # CPU autocast does not cover fp16 convolutions and linears: mixed modules would fail
        raise UserError("mixed_precision='fp16' needs a GPU; on a CPU use 'bf16' (or 'no')")
    return acc


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    name, decay = config.optimizer, config.adam_weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, weight_decay=decay)
    if name == "adafactor":  # factored second moments: a few bytes per row and column, not 8 per weight
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=config.learning_rate, weight_decay=decay, scale_parameter=False, relative_step=False, warmup_init=False)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("optimizer adamw8bit needs bitsandbytes (and a GPU): `pip install bitsandbytes`, or use optimizer=adamw") from None
        return bnb.optim.AdamW8bit(groups, lr=config.learning_rate, weight_decay=decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise UserError("optimizer prodigy needs prodigyopt: `pip install prodigyopt`, or use optimizer=adamw") from None
        return Prodigy(groups, lr=config.learning_rate, weight_decay=decay)
    raise UserError(f"unknown optimizer {name!r}")


def file_identity(path: Path) -> str:
    """sha256 of a model file (A1111's model hash; its first 10 hex digits are the short hash),
    or of a diffusers folder's weight files."""
    from ..models.hashes import file_sha256

    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def weights_identity(model: "BaseModel") -> str:
    """sha256 of an in-memory model's UNet weights (for a model that has no file)."""
    h = hashlib.sha256()
    for k, v in sorted(model.unet.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_out_of_memory(exc: RuntimeError) -> bool:
    """A RuntimeError that is an allocation failure (CPU allocator, or a backend without OutOfMemoryError)."""
    text = str(exc)
    return "DefaultCPUAllocator: can't allocate" in text or "out of memory" in text.lower()


def log_line(event: Event) -> tuple[str, str] | None:
    """What log.txt records of an event: warnings, milestones and files (not every step)."""
    if isinstance(event, Log):
        return event.level, event.message
    if isinstance(event, Error):
        return "error", event.message + (f"\n{event.traceback}" if event.traceback else "")
    if isinstance(event, Started):
        return "info", f"started {event.method}: steps {event.start_step} to {event.total_steps} in {event.run_dir}"
    if isinstance(event, Artifact):
        return "info", f"saved {event.kind}: {event.path}" + (f" (use {event.prompt_hint})" if event.prompt_hint else "")
    if isinstance(event, Done):
        return "info", f"{event.status} at step {event.step}"
    return None


def _with_average(fn):
    """Run `fn` with the weight average (train.ema) in the trained weights, when there is one:
    what is saved and drawn is the average."""
    @functools.wraps(fn)
    def wrapper(self: "Trainer", *args, **kwargs):
        with self.ema.swapped_in() if self.ema is not None else nullcontext():
            return fn(self, *args, **kwargs)
    return wrapper


class Trainer:
    """One run. `model` (with `model_name`) lets tests and in-process hosts train a model
    that is already loaded; otherwise `config.base_model` is loaded."""

    def __init__(self, config: TrainConfig, emit: EventSink, cancel: CancelToken,
                 model: "BaseModel | None" = None, model_name: str | None = None):
        self.config = config
        self._sink = emit
        self.cancel = cancel
        self.model = model
        self.model_name = model_name or (model.name if model is not None else Path(config.base_model).name)
        self._model_hash: str | None = None
        self.run_dir: RunDir | None = None
        self.artifacts: list[Artifact] = []
        self.step = 0
        self.micro_step = 0
        self.acc = None
        self.ema: WeightAverage | None = None
        self.fused = None   # train.fused_step.FusedOptimizerStep when the optimizer steps inside backward
        self.own_finals: set[str] = set()  # this run's final outputs that a continuation replaces
        self.evaluation = None  # evaluate.session.Session when the run is evaluated
        self.weights_step: int | None = None  # select_best: the step whose weights are published
        self._retried = False  # an out-of-memory retry (memory="auto") happens once
        self._parked: list[torch.nn.Module] = []  # on the CPU between validation previews (_free_unneeded)

    # ---- events ----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.acc is None or self.acc.is_main_process

    def emit(self, event: Event) -> None:
        if not self.is_main:
            return
        if self.run_dir is not None and self.run_dir.root.is_dir():
            line = log_line(event)
            if line:
                self.run_dir.log(*line)
        self._sink(event)

    def warn(self, message: str) -> None:
        self.emit(Log(level="warning", message=message))

    def info(self, message: str) -> None:
        self.emit(Log(level="info", message=message))

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = file_identity(Path(self.config.base_model)) if self.config.base_model and Path(self.config.base_model).exists() \
                else weights_identity(self.model)
        return self._model_hash

    # ---- the run ---------------------------------------------------------------------
    def run(self) -> RunResult:
        with contextlib.ExitStack() as self._scope:   # what the run changed in the process, undone after it
            try:
                return self._run()
            except OutOfMemory as exc:
                retry = self._retry_with_less_memory(exc)
                if retry is None:
                    self._failed(exc)
                    raise
                return retry.run()
            except Cancelled:
                self.info("cancelled before training started; nothing to resume")
                return self._done("cancelled")
            except Exception as exc:
                self._failed(exc)
                raise

    def _failed(self, exc: Exception) -> None:
        user = isinstance(exc, UserError)
        self.emit(Error(message=str(exc) or type(exc).__name__, user_error=user, traceback="" if user else traceback.format_exc()))
        self.emit(Done(status="failed", run_dir=str(self.run_dir.root) if self.run_dir else "", step=self.step,
                       artifacts=[a.to_dict() for a in self.artifacts]))

    def _retry_with_less_memory(self, exc: OutOfMemory) -> "Trainer | None":
        """memory="auto": once, a new run that resumes from the saved state with the next
        saving (plan.auto.next_saving); it loads the model again, so it needs a model file."""
        from ..plan.auto import next_saving
        from ..plan.memory import run_device

        cfg = self.config
        if cfg.memory != "auto" or self._retried or not cfg.base_model or not Path(cfg.base_model).exists():
            return None
        saving = next_saving(cfg, run_device())
        if saving is None:
            return None
        self.warn(f"{exc} Resuming once with {saving.name}.")
        # nothing saved yet (out of memory in the first step): start the run again
        start = dict(resume_from="latest") if exc.step > 0 else dict(resume_from=None, overwrite=True)
        retry_cfg = dataclasses.replace(cfg, **start, **saving.changes)
        retry = Trainer(retry_cfg, self._sink, self.cancel, model_name=self.model_name)
        retry._retried = True
        self.model = None  # let the first attempt's model go before the second loads
        return retry

    def _run(self) -> RunResult:
        self.config = cfg = self.config.validate(check_paths=self.model is None)  # a kohya dataset_config read in
        self._started_at = time.time()
        self.config = cfg = self._fit_memory(cfg)
        self.acc = acc = make_accelerator(cfg)
        self.run_dir = rd = RunDir.for_config(cfg)
        resume = rd.resume_folder(cfg.resume_from)
        # a finished run continued from its last state replaces its own final artifacts
        self.own_finals = rd.own_final_outputs(saved_step(resume)) if resume is not None else set()
        if resume is None:
            rd.check_fresh(cfg.overwrite)
        elif not cfg.overwrite:
            rd.check_no_final_output(cfg.name, self.own_finals)
        acc.wait_for_everyone()
        if self.is_main:
            rd.create(clear=resume is None and cfg.overwrite)
        acc.wait_for_everyone()
        self.emit(Started(run_dir=str(rd.root), method=cfg.method, total_steps=cfg.max_train_steps,
                          start_step=saved_step(resume) if resume is not None else 0))
        if self.is_main and self.memory_plan is not None:
            self.memory_plan.write(rd.root / "memory_plan.json")
            self.info(self.memory_plan.describe())
        if self._no_plan:
            self.warn(self._no_plan)
        if cfg.resume_from == "latest" and resume is None:
            self.warn(f"no saved state in {rd.state}: starting from step 0")
        for problem in rd.skipped_states:
            self.warn(f"{problem}: resuming from the state saved before it")
        if acc.device.type == "cpu":
            from .threads import choose_threads, cpu_threads

            threads = choose_threads()
            self._scope.enter_context(cpu_threads(threads))
            self.info(threads.describe())

        model = self._load_model()
        self.resolution = cfg.resolution or model.family.resolution
        model.check_resolution(self.resolution)
        for tok in model.tokenizers[:1]:
            warning = common_word_warning(tok, cfg.token)
            if warning:
                self.warn(warning)

        instance_records, class_records = self._scan_images(model)
        self.evaluation = self._start_evaluation(model, resume)
        torch.manual_seed(cfg.seed)  # identical initial weights (LoRA, hypernetwork) on every process
        self.method = method = self._make_method(model)
        self.data = self._build_data(model, method, instance_records, class_records)
        self._free_unneeded(model, method)

        if cfg.optimizer == "prodigy" and cfg.learning_rate < 0.1:
            self.warn(f"prodigy sets its own step size and expects learning_rate=1.0 (got {cfg.learning_rate}): training will barely move")
        self.params = method.parameters()
        self.ema = WeightAverage.for_config(cfg, self.params)
        self.optimizer = acc.prepare(build_optimizer(cfg, method.param_groups()))
        self.fused = self._fuse_optimizer_step() if cfg.fused_optimizer_step else None
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_train_steps)
        if resume is not None:
            self._resume(resume)
        elif self.is_main:
            rd.truncate_loss(0)
        if self.is_main:
            rd.write_config({**cfg.to_dict(), "resolved": {
                "family": model.family.name, "resolution": self.resolution, "prediction_type": model.prediction_type,
                "num_processes": acc.num_processes, "base_model_name": self.model_name, "base_model_hash": self.model_hash,
            }})
        return self._train()

    # ---- set-up ------------------------------------------------------------------------
    def _fit_memory(self, cfg: TrainConfig) -> TrainConfig:
        """memory="auto": the settings that fit the device (plan/auto.py), chosen and checked
        before the model loads; the plan is logged and written into the run folder once it exists."""
        self.memory_plan, self._no_plan = None, ""
        if cfg.memory != "auto":
            return cfg
        from ..plan.auto import plan_for_run
        from ..plan.memory import UnreadableWithoutLoading

        try:
            cfg, self.memory_plan = plan_for_run(cfg, model=self.model)
        except UnreadableWithoutLoading as exc:   # said after Started, with the plan's place in the log
            self._no_plan = f"no memory plan: {exc}; training with the settings as given"
        return cfg

    def _load_model(self) -> "BaseModel":
        if self.model is None:
            from ..fileio import unsafe_pickle_requested
            from ..models.load import load_base_model

            from ..methods import get_method

            cfg = self.config
            dtypes = get_method(cfg.method).load_dtypes(cfg, WEIGHT_DTYPES[cfg.mixed_precision])
            self.model = load_base_model(cfg.base_model, family=cfg.family, dtype=dtypes, unsafe_pickle=unsafe_pickle_requested())
        for module in (self.model.unet, self.model.vae, *self.model.text_encoders):
            module.to(self.acc.device)
        return self.model

    def _scan_images(self, model: "BaseModel"):
        """(instance, class) lists of (concept, image records); class images of a concept are
        generated when the run has no reg concepts."""
        from ..data.concepts import concept_runs
        from ..data.images import scan_images

        cfg = self.config
        min_size = min(self.resolution, 256)
        scanned = [(run, scan_images(run.concept.image_dir, warn=self.warn, min_size=min_size,
                                     caption_extension=run.config.caption_extension)) for run in concept_runs(cfg)]
        instance = [(run, records) for run, records in scanned if not run.concept.is_reg]
        classes = [(run, records) for run, records in scanned if run.concept.is_reg]
        if not cfg.with_prior_preservation:
            return instance, []
        if not classes:
            classes = [(run, scan_images(self._class_images(model, run.config), warn=self.warn, min_size=min_size)) for run, _ in instance]
        return instance, classes

    def _class_images(self, model: "BaseModel", cfg: TrainConfig) -> Path:
        from ..class_images import ClassImageSpec, default_class_dir, ensure_class_images

        spec = ClassImageSpec.from_config(cfg, self.model_hash, self.resolution)
        if self.is_main:
            with self.acc.autocast(), self._packing(gradients=False):  # frozen parts may already be in the compute dtype, the rest in fp32
                # image i is the same picture at any batch size; batches only pay off on a GPU
                ensure_class_images(model, cfg, spec, self.emit, self.cancel, batch_size=4 if self.acc.device.type == "cuda" else 1)
        self.acc.wait_for_everyone()
        return Path(cfg.class_data_dir) if cfg.class_data_dir else default_class_dir(cfg, spec)

    def _start_evaluation(self, model: "BaseModel", resume: Path | None):
        """The run's evaluation (evaluate/), set up while the model is still the base: the
        base's class images are drawn (or reused from the run folder) now. None when off."""
        from ..evaluate.session import HOW_TO_ENABLE, Session, evalset_for, find_scorer

        cfg = self.config
        if not cfg.eval_interval:
            return None
        scorer = find_scorer(cfg.eval_encoder, cfg.base_model, self.model_name)
        if scorer is None:
            self.info(HOW_TO_ENABLE)
            return None
        self.info(f"evaluating every {cfg.eval_interval} steps with {scorer.name}")
        self.emit(Progress(phase="evaluation", step=0, total=cfg.max_train_steps))
        evalset = evalset_for(cfg, scorer, self.resolution)
        folder = self.run_dir.root / "eval"
        session = None
        if self.is_main:
            with self.acc.autocast(), self._packing(gradients=False):
                session = Session.start(scorer, evalset, cfg.instance_data_dir or cfg.concepts[0]["image_dir"], folder,
                                        model, self.model_hash)
            session.truncate(saved_step(resume) if resume is not None else -1)   # a fresh run starts its curves anew
        self.acc.wait_for_everyone()
        return session if self.is_main else True

    @_with_average
    def _evaluate(self) -> None:
        """The measures at this step, as a curve point, an event and (select_best) the kept weights."""
        from ..evaluate.select import Bounds, choose_best
        from ..evaluate.session import format_scores

        cfg, session = self.config, self.evaluation
        if session is None:
            return
        if self.is_main:
            self.method.train(False)
            self.emit(Progress(phase="evaluation", step=self.step, total=cfg.max_train_steps))
            with self._on_device():
                scores = session.measure(self.model, self.acc.autocast)
            rows = session.record({"step": self.step, **scores})
            best = choose_best(rows, Bounds(cfg.select_max_prior_drift, cfg.select_max_prompt_drop))
            if cfg.select_best and best is not None and best["step"] == self.step:
                session.keep(self.method.state_dict(), self.step)
            self.info(f"step {self.step}: {format_scores(scores)}")
            self.emit(Evaluation(step=self.step, scores=scores, best_step=int(best["step"]) if best else None,
                                 plot=str(session.png)))
        self.acc.wait_for_everyone()

    def _publish_best(self) -> None:
        """select_best: put the best evaluated step's weights in place of the last step's
        before the final artifact is saved (the state saved for resuming stays the last step's)."""
        from ..evaluate.select import Bounds, choose_best, describe

        cfg, session = self.config, self.evaluation
        if not cfg.select_best or not self.is_main or session is None:
            return
        best = choose_best(session.rows, Bounds(cfg.select_max_prior_drift, cfg.select_max_prompt_drop))
        if best is None:
            self.warn(f"select_best: no evaluated step kept prior drift <= {cfg.select_max_prior_drift} and prompt fidelity "
                      f"within {cfg.select_max_prompt_drop:.0%} of the untrained model's: publishing the last step")
            return
        weights = session.kept_weights(int(best["step"])) if best["step"] != self.step else None
        if best["step"] != self.step and weights is None:
            self.warn(f"select_best: the weights of step {int(best['step'])} were not kept: publishing the last step")
            return
        if weights is not None:
            self.method.load_state_dict(weights)
            self.weights_step = int(best["step"])
        self.info(describe(best))

    def _make_method(self, model: "BaseModel") -> "Method":
        from ..methods import get_method

        cfg = self.config
        self.weight_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
        method = get_method(cfg.method)(cfg, model)
        method.setup(self.weight_dtype)
        if model.family.is_sdxl and self.weight_dtype == torch.float16:
            model.vae.to(dtype=torch.float32)  # the SDXL VAE overflows in fp16
        if cfg.gradient_checkpointing:
            method.enable_gradient_checkpointing()
        return method

    def _build_data(self, model: "BaseModel", method: "Method", instance_records, class_records) -> TrainingData:
        from ..data.concepts import concept_examples

        cfg = self.config
        instances, classes = concept_examples(instance_records, class_records, self.resolution, cfg)
        data = TrainingData(instances, classes, cfg.train_batch_size, self.acc.num_processes, cfg.seed, cfg.center_crop, cfg.random_flip)
        self.info(f"{len(instances)} instance image(s){f', {len(classes)} class image(s)' if classes else ''}, "
                  f"{self.acc.num_processes} process(es), batch {cfg.train_batch_size} per process")
        self._report_buckets(data)
        self.noise_scheduler = model.noise_scheduler()
        vae = model.vae
        self.latent_scale = vae.config.scaling_factor
        self.latent_shift = getattr(vae.config, "shift_factor", None) or 0.0
        if cfg.cache_latents:
            data.build_latent_cache(self._encode_pixels, self._caching_progress)
        self.prompts = PromptCache(model.tokenizers, data.prompts, transform=method.prompt, encoding=cfg.text_encoding)
        if not method.trains_text_encoder:
            # varied captions are encoded as they are drawn (each variant is seen about once)
            self.prompts.freeze(model.text_encoders, model.family, precompute=not data.captions_vary)
        return data

    def _report_buckets(self, data: TrainingData) -> None:
        from ..data.buckets import bucket_table

        for s in data.sets.values():
            self.info(f"{s.role} buckets (width x height: images): {bucket_table([e.bucket for e in s.examples])}")

    def _caching_progress(self, done: int, total: int) -> None:
        self.emit(Progress(phase="caching", step=done, total=total))
        self.cancel.check()

    def _encode_pixels(self, pixels: torch.Tensor) -> LatentStats:
        vae = self.model.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.acc.device, vae.dtype)).latent_dist
        return LatentStats(dist.mean.float().cpu(), dist.std.float().cpu())

    def _free_unneeded(self, model: "BaseModel", method: "Method") -> None:
        """What no step needs (the VAE once latents are cached, the text encoders once their
        outputs are) leaves the device: to the meta device, which frees it at once, when nothing
        after the steps needs it; else, on a GPU, to the CPU until validation previews or
        evaluations bring it back (`_on_device`) or full-model saving reads it there."""
        idle = ([model.vae] if self.data.cached else []) + (list(model.text_encoders) if self.prompts.embeds is not None else [])
        if not (self.config.num_validation_images > 0 or method.needs_full_model or self.evaluation is not None):
            for module in idle:
                module.to("meta")
        elif self.acc.device.type != "cpu":
            for module in idle:
                module.to("cpu")
            self._parked = idle

    @contextlib.contextmanager
    def _on_device(self):
        """The components `_free_unneeded` parked on the CPU, back on the device meanwhile."""
        for module in self._parked:
            module.to(self.acc.device)
        try:
            yield
        finally:
            for module in self._parked:
                module.to("cpu")

    def _fuse_optimizer_step(self):
        """Step each weight during backward (train.fused_step); the hooks go when the run ends,
        so a host's model trained again in the same process is not stepped twice."""
        from .fused_step import FusedOptimizerStep

        cfg = self.config
        reduce = self._average_gradient if self.acc.num_processes > 1 else None
        fused = FusedOptimizerStep(self.optimizer, cfg.max_grad_norm, reduce=reduce)
        self._scope.callback(fused.remove)
        if cfg.max_grad_norm > 0:
            self.info(f"optimizer step fused into backward: each weight's gradient is clipped to norm {cfg.max_grad_norm} "
                      "on its own (the global norm is never formed)")
        return fused

    def _average_gradient(self, grad: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(grad)
        grad /= self.acc.num_processes

    def _resume(self, folder: Path) -> None:
        state = load_state(folder)
        check_compatible(state, self.config, folder)
        if state.step >= self.config.max_train_steps:
            raise UserError(f"the state in {folder} is already at step {state.step} of {self.config.max_train_steps}: "
                            "raise max_train_steps to train further")
        weights, average = split_state(state.weights)
        self.method.load_state_dict(weights)
        if self.ema is not None:
            self.ema.load_state_dict(average)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.scheduler)
        restore_rng(state.rng)
        self.step, self.micro_step = state.step, state.micro_step
        if self.is_main:
            self.run_dir.truncate_loss(self.step)
        self.info(f"resumed from {folder} at step {self.step}")

    # ---- training ----------------------------------------------------------------------
    def _train(self) -> RunResult:
        self.session_start = self.step
        with self._packing(gradients=True) as packed:
            if packed:
                self.info(f"{packed} frozen convolutions will run on weights packed for oneDNN")
            return self._run_steps()

    def _packing(self, gradients: bool):
        """Pack the UNet's frozen convolutions (train.packed_convs) when asked, and, for
        training, when the extra copy of their weights takes at most half the free memory."""
        if not self.config.pack_frozen_convolutions:
            return nullcontext(0)
        if gradients:
            import psutil

            extra, free = packing_cost(self.model.unet), psutil.virtual_memory().available
            if extra > free / 2:
                self.info(f"frozen convolutions stay plain: packing them would take {extra / 2**30:.1f} GiB more "
                          f"with {free / 2**30:.1f} GiB free (pack_frozen_convolutions)")
                return nullcontext(0)
        return packed_frozen_convolutions(self.model.unet, gradients=gradients)

    def _run_steps(self) -> RunResult:
        try:
            return self._steps()
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise self._out_of_memory(exc) from exc
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._out_of_memory(exc) from exc

    def _out_of_memory(self, exc: BaseException) -> OutOfMemory:
        """Keep the last finished step's state and say what to change."""
        from ..plan.auto import next_saving
        from ..plan.memory import run_device

        self.optimizer.zero_grad(set_to_none=True)
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        kept, saved = "", self.step
        if self.fused is not None and self.fused.stepped:
            # the weights are step k-1's no more: keep the last state saved before
            states = state_dirs(self.run_dir.state)
            saved = saved_step(states[-1]) if states else 0
            kept = (f" the step had already updated {self.fused.stepped} weights (the optimizer step is fused into backward),"
                    f" so no state is saved now ({f'the state of step {saved} is kept' if states else 'none was saved before'});")
        elif self.step > self.session_start:
            self._save_state()
            kept = f" the state of step {self.step} is saved (resume_from='latest' continues from it);"
        saving = next_saving(self.config, run_device())
        advice = f"set {', '.join(f'{k}={v!r}' for k, v in saving.changes.items())}" if saving else "lower resolution or train_batch_size"
        return OutOfMemory(f"out of memory at step {self.step + 1} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]});{kept} "
                           f"to fit, {advice}, or free memory the host holds (close other models), then resume.", saved)

    def _steps(self) -> RunResult:
        cfg = self.config
        try:
            if self.step == 0:
                self._validate()
                self._evaluate()
            self.method.train(True)
            t0, first = time.monotonic(), self.step
            tensorboard = self._tensorboard()
            while self.step < cfg.max_train_steps:
                if self._cancel_requested():
                    return self._stop_cancelled()
                losses, lr = self._optimizer_step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update()
                elapsed = time.monotonic() - t0
                eta = elapsed / (self.step - first) * (cfg.max_train_steps - self.step)
                self.emit(Progress(phase="train", step=self.step, total=cfg.max_train_steps, eta_seconds=eta,
                                   loss=losses[0], lr=lr, elapsed_seconds=elapsed))
                if self.is_main:
                    self.run_dir.append_loss({"step": self.step, "loss": losses[0], "instance_loss": losses[1],
                                              "prior_loss": losses[2], "lr": lr})
                    if tensorboard is not None:
                        tensorboard.add_scalar("loss", losses[0], self.step)
                        tensorboard.add_scalar("lr", lr, self.step)
                if self.step < cfg.max_train_steps:
                    if cfg.checkpointing_steps and self.step % cfg.checkpointing_steps == 0:
                        self._save_state()
                        if self.method.small_artifacts:
                            self._save_artifacts(f"{cfg.name}-step{self.step}", final=False)
                    if cfg.validation_steps and self.step % cfg.validation_steps == 0:
                        self._validate()
                        self.method.train(True)
                    if cfg.eval_interval and self.step % cfg.eval_interval == 0:
                        self._evaluate()
                        self.method.train(True)
            self.method.train(False)
            self._save_state()
            # saved just above and needed by nothing after it: its memory goes back before the final
            # evaluations and saves (a full fine-tune's save makes a copy of the model in save_dtype)
            self.optimizer.state.clear()
            if self.ema is not None:
                self.ema.apply()  # the average is the result: saved, drawn and left in the model
            self._evaluate()
            self._publish_best()
            self._save_artifacts(cfg.name, final=True)
            self.method.finish()
        except Cancelled:
            return self._stop_cancelled()
        try:
            self._validate()
        except Cancelled:
            self.info("final validation skipped (cancelled); the trained artifacts are saved")
        self._save_loss_plot()
        return self._done("completed")

    def _cancel_requested(self) -> bool:
        flag = torch.tensor([1.0 if self.cancel.cancelled else 0.0], device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def _optimizer_step(self) -> tuple[tuple[float, float, float | None], float]:
        """One optimizer step over `gradient_accumulation_steps` micro-batches: the mean
        (loss, instance loss, prior loss) and the learning rate used."""
        cfg, acc = self.config, self.acc
        lr = self.lr_scheduler.get_last_lr()[0]
        torch.manual_seed(derive_seed(cfg.seed, "global", self.step, acc.process_index))  # any stray randomness (dropout)
        totals = torch.zeros(3, device=acc.device)
        if self.fused is not None:
            self.fused.stepped = 0
        for _ in range(cfg.gradient_accumulation_steps):
            with acc.accumulate():
                with acc.autocast():
                    parts = self._loss(self.micro_step)
                acc.backward(parts.total)   # with a fused step, every weight is stepped inside backward
                if self.fused is None:
                    if acc.sync_gradients:
                        self._average_gradients()
                        if cfg.max_grad_norm > 0:
                            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.micro_step += 1
            totals += torch.stack([parts.total.detach().float(), parts.instance.float(),
                                   parts.prior.float() if parts.prior is not None else torch.zeros((), device=acc.device)])
        self.lr_scheduler.step()
        totals /= cfg.gradient_accumulation_steps
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="mean")
        loss, instance, prior = totals.tolist()
        return (loss, instance, prior if self.data.has_class else None), lr

    def _average_gradients(self, bucket_numel: int = 1 << 24) -> None:
        """Average the gradients over processes, in buckets of at most `bucket_numel` values
        (every process runs the same graph, so the buckets line up)."""
        if self.acc.num_processes == 1:
            return

        def flush(bucket: list[torch.Tensor]) -> None:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            self._average_gradient(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

        bucket: list[torch.Tensor] = []
        for g in (p.grad for p in self.params if p.grad is not None):
            if bucket and sum(b.numel() for b in bucket) + g.numel() > bucket_numel:
                flush(bucket)
                bucket = []
            bucket.append(g)
        if bucket:
            flush(bucket)

    def _loss(self, m: int):
        """The loss of this process's share of global micro-batch m."""
        roles = ["instance"] + (["class"] if self.data.has_class else [])
        inputs = [self._unet_inputs(role, m) for role in roles]
        if len(inputs) == 2 and all(inputs[0][k].shape[1:] == inputs[1][k].shape[1:] for k in ("noisy", "hidden")):
            joint = {k: (torch.cat([inputs[0][k], inputs[1][k]]) if inputs[0][k] is not None else None) for k in inputs[0]}
            losses = list(self._example_losses(joint).split([len(inputs[0]["noisy"]), len(inputs[1]["noisy"])]))
        else:
            losses = [self._example_losses(x) for x in inputs]
        if len(losses) > 1:
            losses[1] = losses[1] * inputs[1]["weight"]   # each concept's prior weight, relative to the run's
        return dreambooth_loss(losses[0], losses[1] if len(losses) > 1 else None, self.config.prior_loss_weight)

    def _unet_inputs(self, role: str, m: int) -> dict[str, torch.Tensor | None]:
        cfg, model, device = self.config, self.model, self.acc.device
        scheduler = self.noise_scheduler
        items = self.data.items(role, m, self.acc.process_index)
        stats = self.data.latent_stats(role, items, m, self._encode_pixels)
        latents, noise, timesteps = [], [], []
        for i, item in enumerate(items):
            g = example_generator(cfg.seed, "noise", role, m, item.slot)
            latents.append(stats.mean[i] + stats.std[i] * torch.randn(stats.mean[i].shape, generator=g))
            noise.append(sample_noise(tuple(latents[-1].shape), g, cfg.noise_offset))
            timesteps.append(sample_timestep(scheduler.config.num_train_timesteps, g))
        latents_t = ((torch.stack(latents) - self.latent_shift) * self.latent_scale).to(device)
        noise_t = torch.stack(noise).to(device)
        t = torch.tensor(timesteps, device=device, dtype=torch.long)
        embeds = self.prompts.get([self.data.prompt(role, m, it) for it in items], model.text_encoders, model.family)
        dtype = self.weight_dtype
        return {
            "noisy": scheduler.add_noise(latents_t, noise_t, t).to(dtype),
            "timesteps": t,
            "target": training_target(scheduler, latents_t, noise_t, t),
            "hidden": embeds.hidden.to(device, dtype),
            "pooled": embeds.pooled.to(device, dtype) if embeds.pooled is not None else None,
            "time_ids": torch.tensor([it.time_ids for it in items], device=device, dtype=dtype) if model.family.is_sdxl else None,
            "weight": torch.tensor([it.example.weight / cfg.prior_loss_weight for it in items], device=device),
            "mask": self._mask_weights(items, latents_t) if self.data.has_masks else None,
        }

    def _mask_weights(self, items, latents: torch.Tensor) -> torch.Tensor:
        """Per-latent-pixel loss weights [B, 1, h, w]: 1 inside an image's mask, masked_loss_floor
        outside (an image without a mask weighs 1 everywhere)."""
        import torch.nn.functional as F

        floor, size = self.config.masked_loss_floor, latents.shape[-2:]
        maps = [F.interpolate(it.mask[None], size=size, mode="area")[0] if it.mask is not None else torch.ones(1, *size)
                for it in items]
        return (floor + (1 - floor) * torch.stack(maps)).to(latents.device)

    def _example_losses(self, x: dict[str, torch.Tensor | None]) -> torch.Tensor:
        kwargs = {}
        if self.model.family.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": x["pooled"], "time_ids": x["time_ids"]}
        pred = self.model.unet(x["noisy"], x["timesteps"], encoder_hidden_states=x["hidden"], **kwargs).sample
        losses = per_example_mse(pred, x["target"], x.get("mask"))
        if self.config.snr_gamma:
            losses = losses * min_snr_weights(self.noise_scheduler, x["timesteps"], self.config.snr_gamma)
        return losses

    # ---- saving ------------------------------------------------------------------------
    def _save_state(self) -> None:
        if self.is_main:
            folder = save_state(self.run_dir.state, TrainingState(
                step=self.step, micro_step=self.micro_step,
                weights={**self.method.state_dict(), **(self.ema.state_dict() if self.ema is not None else {})},
                optimizer=self.optimizer.state_dict(), scheduler=self.lr_scheduler.state_dict(),
                rng=rng_states(), settings=resume_settings(self.config),
            ))
            self._announce(Artifact(kind="state", path=str(folder), name=folder.name, final=False))
        self.acc.wait_for_everyone()

    @_with_average
    def _save_artifacts(self, stem: str, final: bool) -> None:
        from ..methods.base import SaveInfo

        cfg = self.config
        if self.is_main:
            info = SaveInfo(
                # intermediate artifacts belong to this run: a resumed run rewrites them
                out_dir=self.run_dir.outputs, stem=stem, step=self.step, final=final,
                overwrite=cfg.overwrite or not final or bool(self.own_finals), base_model=self.model_name, base_model_hash=self.model_hash,
                metadata=self._training_facts(),
            )
            self.emit(Progress(phase="saving", step=self.step, total=cfg.max_train_steps))
            saved = self.method.save(info)
            for artifact in saved:
                self._announce(artifact)
            if final:
                self.run_dir.record_final(self.step, [a.path for a in saved])
        self.acc.wait_for_everyone()

    def _announce(self, artifact: Artifact) -> None:
        self.artifacts.append(artifact)
        self.emit(artifact)

    def _training_facts(self) -> dict[str, str]:
        """kohya's ss_* training facts (A1111 and model browsers show them)."""
        cfg, family = self.config, self.model.family
        facts = {
            "ss_sd_model_name": self.model_name,
            "ss_new_sd_model_hash": self.model_hash,
            "ss_base_model_version": family.base_model_version,
            "ss_v2": str(family.is_v2),
            "ss_steps": str(self.weights_step or self.step),
            "ss_max_train_steps": str(cfg.max_train_steps),
            "ss_learning_rate": str(cfg.learning_rate),
            "ss_unet_lr": str(cfg.learning_rate),
            "ss_text_encoder_lr": str(cfg.text_encoder_learning_rate or cfg.learning_rate),
            "ss_lr_scheduler": cfg.lr_scheduler,
            "ss_lr_warmup_steps": str(cfg.lr_warmup_steps),
            "ss_batch_size_per_device": str(cfg.train_batch_size),
            "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
            "ss_mixed_precision": cfg.mixed_precision,
            "ss_seed": str(cfg.seed),
            "ss_resolution": f"({self.resolution}, {self.resolution})",
            "ss_enable_bucket": str(cfg.enable_bucketing),
            "ss_prior_loss_weight": str(cfg.prior_loss_weight),
            "ss_min_snr_gamma": str(cfg.snr_gamma) if cfg.snr_gamma else "None",
            "ss_noise_offset": str(cfg.noise_offset),
            "ss_gradient_checkpointing": str(cfg.gradient_checkpointing),
            "ss_training_started_at": str(int(self._started_at)),
            "ss_training_finished_at": str(int(time.time())),
            "ss_num_processes": str(self.acc.num_processes),
        }
        facts.update(self._data_facts())
        return facts

    def _data_facts(self) -> dict[str, str]:
        """kohya's facts about the data and text encoding (data/metadata.py)."""
        from ..data.metadata import dataset_facts

        cfg = self.config
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)   # accelerate wraps it
        planned = cfg.max_train_steps * cfg.gradient_accumulation_steps
        return {**dataset_facts(self.data, self.micro_step, planned),
                "ss_clip_skip": str(cfg.clip_skip), "ss_max_token_length": str(cfg.max_token_length),
                "ss_bucket_no_upscale": str(cfg.bucket_no_upscale), "ss_shuffle_caption": str(cfg.shuffle_caption),
                "ss_keep_tokens": str(cfg.keep_tokens), "ss_caption_dropout_rate": str(cfg.caption_dropout_rate),
                "ss_caption_tag_dropout_rate": str(cfg.tag_dropout_rate), "ss_weighted_captions": str(cfg.weighted_captions),
                "ss_optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__}"}

    def _stop_cancelled(self) -> RunResult:
        """Keep everything needed to resume, plus the weights so far as a clearly named artifact."""
        if self.step == self.session_start:
            self.info(f"cancelled before step {self.step + 1}: nothing new to save")
            return self._done("cancelled")
        self.method.train(False)
        self.info(f"cancelled at step {self.step}: saving a resumable state")
        self._save_state()
        self._save_artifacts(f"{self.config.name}-step{self.step}-cancelled", final=False)
        self._save_loss_plot()
        return self._done("cancelled")

    def _save_loss_plot(self) -> None:
        if self.is_main:
            path = self.run_dir.write_loss_plot()
            if path is not None:
                self._announce(Artifact(kind="loss_plot", path=str(path), name=path.name, final=False))
            if self.evaluation is not None and self.evaluation.png.is_file():
                self._announce(Artifact(kind="eval_plot", path=str(self.evaluation.png), name=self.evaluation.png.name, final=False))

    def _done(self, status: str) -> RunResult:
        root = self.run_dir.root if self.run_dir else Path()
        self.emit(Done(status=status, run_dir=str(root), step=self.step, artifacts=[a.to_dict() for a in self.artifacts]))
        losses = self.run_dir.read_loss() if self.run_dir and self.is_main else []
        return RunResult(status=status, run_dir=root, step=self.step, artifacts=list(self.artifacts),
                         loss=float(losses[-1]["loss"]) if losses else None)

    def _tensorboard(self):
        """A TensorBoard writer if tensorboard is installed (it is optional)."""
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir.root / "tensorboard"))

    # ---- validation --------------------------------------------------------------------
    @_with_average
    def _validate(self) -> None:
        """Images for every validation prompt with fixed seeds (the same at every step)."""
        cfg = self.config
        n = cfg.num_validation_images
        if n <= 0:
            return
        if self.is_main:
            from ..sample import generate, image_grid

            prompts = cfg.effective_validation_prompts
            self.method.train(False)
            self.emit(Progress(phase="validation", step=self.step, total=cfg.max_train_steps))
            images: list = [None] * (n * len(prompts))
            for i, prompt in enumerate(prompts):
                def save(k: int, image, i=i) -> None:
                    path = self.run_dir.samples / f"step-{self.step:06d}-p{i}-{k}.png"
                    image.save(path)
                    images[k * len(prompts) + i] = image
                    self.emit(Preview(step=self.step, path=str(path), prompt=prompts[i]))
                    self.cancel.check()

                # image k of every prompt uses seed + k, so prompts and steps compare like for like
                with self.acc.autocast(), self._on_device():
                    generate(self.model, [prompt] * n, cfg.negative_prompt, cfg.validation_inference_steps,
                             cfg.guidance_scale, seed=cfg.seed, sampler=cfg.validation_scheduler,
                             width=self.resolution, height=self.resolution, on_image=save, encoding=cfg.preview_encoding)
            grid = self.run_dir.samples / f"step-{self.step:06d}-grid.png"
            image_grid(images, cols=len(prompts)).save(grid)
            self._announce(Artifact(kind="samples", path=str(grid), name=grid.name, final=False))
        self.acc.wait_for_everyone()
