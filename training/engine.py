"""The one training loop, for every adapter (LoRA now, LLLite and ControlNet next).

It knows nothing of the adapter beyond training/adapter.py's TrainableAdapter, nothing of the
data beyond TrainingData below, and reaches ComfyUI's model only through comfy_bridge.
Per optimizer step: noise and timesteps from the engine's own generator, the model's own
noise schedule, loss (l2/l1/huber/smooth_l1, loss masks, min-SNR, prior loss weight) under autocast,
gradient accumulation, fp16 loss scaling, clipping, optimizer and scheduler. Saves every
N steps/epochs through adapter.save() with a resumable state beside each file; a resumed
run continues exactly as the uninterrupted run would have. Under torchrun the same loop runs
in every process (training/distributed.py): gradients averaged, stops agreed, rank 0 saves.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import user_error
from .adapter import TrainableAdapter
from .config import TrainConfig
from .data.batch import Batch
from .distributed import Group, current
from .fsdp import full_weights, idle_pass, unreduced
from .fused_backward import FusedBackward
from .losses import huber_c, min_snr_weight, per_sample_loss
from .noise import sample_timesteps, training_noise
from .optimizers import adafactor_uses_relative_step, build_optimizer
from .param_step import ParamStepper
from .schedulers import build_scheduler
from .state import STATE_SUFFIX, load_state, save_state, state_path_for

if TYPE_CHECKING:  # only type names: the loop itself needs no ComfyUI
    from .comfy_bridge import TextConditioner, TrainingModel

log = logging.getLogger(__name__)

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingData(Protocol):
    """What the loop needs from the data side."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from index `start` on; the same order and augmentation for the
        same seed and epoch, so a resumed run sees what the uninterrupted run saw."""


@user_error
class TrainingDiverged(FloatingPointError):
    pass


@dataclass
class TrainHooks:
    """How a caller watches and steers a run. check_interrupt raises to stop (ComfyUI's
    Cancel: comfy.model_management.throw_exception_if_processing_interrupted)."""

    progress: Callable[[int, int, float], None] | None = None  # (step, total steps, loss)
    samples: Callable[[int, list[torch.Tensor]], None] | None = None  # (step, one IMAGE per prompt)
    check_interrupt: Callable[[], None] | None = None
    # held-out metrics at a step (adapter in eval mode, no grad, training RNG untouched); run
    # before the first step, every cfg.validate_every_n_steps and after the last
    evaluate: Callable[[int], dict[str, float]] | None = None
    evaluated: Callable[[int, dict[str, float]], None] | None = None  # (step, evaluate's result), for progress text
    # the other phases of a run, as one line of text each: "caching latents 3/10", "caching text 4/12",
    # "saving name.safetensors (state 46.1 MB)", "sampling 2 images at step 100"
    phase: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    final_path: Path
    saved: list[Path]
    losses: list[float]  # mean loss of each optimizer step
    samples: list[tuple[int, list[torch.Tensor]]]  # (step, one IMAGE per prompt) per sample round
    steps: int
    epochs: int
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, hooks.evaluate's result)


@dataclass
class _Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done
    losses: list = field(default_factory=list)
    saved: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)


class TrainingEngine:
    def __init__(self, cfg: TrainConfig, model: TrainingModel, text: TextConditioner, adapter: TrainableAdapter,
                 data: TrainingData, output_dir: str | Path, make_metadata: Callable[[dict], dict[str, str]],
                 facts: dict | None = None, sampler=None, hooks: TrainHooks | None = None, group: Group | None = None):
        """make_metadata: training facts -> the adapter's file metadata. facts: what the
        caller knows (model name, dataset statistics), merged with the loop's own.
        sampler: optional samples.SampleRenderer for sample images during training.
        group: the data-parallel group (default: the process's, training.distributed.current())."""
        self.cfg = cfg
        self.model = model
        self.text = text
        self.adapter = adapter
        self.data = data
        self.output_dir = Path(output_dir)
        self.make_metadata = make_metadata
        self.facts = dict(facts or {})
        self.sampler = sampler
        self.hooks = hooks or TrainHooks()
        self.group = group or current()
        self.pos = _Position()
        self.samples: list[tuple[int, list[torch.Tensor]]] = []
        nb = len(data)
        if nb < 1:
            raise ValueError("the dataset yields no batch")
        self.steps_per_epoch = math.ceil(nb / cfg.gradient_accumulation_steps)
        self.total_steps = cfg.max_train_epochs * self.steps_per_epoch if cfg.max_train_epochs else cfg.max_train_steps
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # -- set-up ------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # adapter dropout draws from the global generator
        self.adapter.attach(self.model.diffusion_model, self.text.modules() if self.adapter.trains_text_encoders else {})
        self.adapter.train(True)
        unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate
        groups = self.adapter.param_groups(unet_lr, cfg.text_encoder_lr)
        if not groups:
            raise ValueError("the adapter has nothing to train at these learning rates")
        self.params = [p for g in groups for p in g["params"]]
        if cfg.full_bf16:  # sd-scripts' full_bf16: trained weights, their gradients and optimizer state in bf16
            for p in self.params:
                p.data = p.data.to(torch.bfloat16)
        self.optimizer = build_optimizer(cfg.optimizer_type, groups, cfg.learning_rate, cfg.optimizer_args)
        self.stepper = ParamStepper(self.optimizer, cfg.optimizer_type, stochastic_bf16=cfg.full_bf16)
        scheduler_name = "adafactor" if adafactor_uses_relative_step(cfg.optimizer_type, cfg.optimizer_args) else cfg.lr_scheduler
        self.scheduler = build_scheduler(scheduler_name, self.optimizer, self.total_steps, cfg.warmup_steps(self.total_steps),
                                         cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power, cfg.lr_scheduler_args, cfg.learning_rate)
        fp16 = self.model.compute_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.model.device.type) if fp16 else None
        self.started_at = time.time()
        if cfg.resume:
            self._load_state(cfg.resume)
        self.fused = FusedBackward(self.stepper, self.params, self.group.world) if cfg.fused_backward_pass else None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._setup()
        try:
            if self.hooks.evaluate and not any(s == self.pos.step for s, _ in self.pos.evaluations):
                self._evaluate()
            while self.pos.step < self.total_steps:
                self._run_epoch()
            final = self._save(self.output_dir / f"{self.cfg.output_name}.safetensors")
        finally:
            if self.fused is not None:
                self.fused.remove()
            self.adapter.train(False)
            self.adapter.detach()
        return TrainResult(final, list(self.pos.saved), list(self.pos.losses), self.samples, self.pos.step, self.pos.epoch,
                           list(self.pos.evaluations))

    def _run_epoch(self) -> None:
        ga, nb = self.cfg.gradient_accumulation_steps, len(self.data)
        micro_losses = []
        for batch in self.data.batches(self.pos.epoch, self.pos.batch):
            self._check_interrupt()
            micro_losses.append(self._forward_backward(batch, ga))
            self.pos.batch += 1
            epoch_done = self.pos.batch >= nb
            if len(micro_losses) < ga and not epoch_done:
                continue
            # every rank sees the same mean loss, so a NaN anywhere stops all of them at the same step
            loss = (self.group.sum(torch.stack(micro_losses).mean()) / self.group.world).item()
            micro_losses = []
            if not math.isfinite(loss):
                self._diverged(loss)
            self.group.average_gradients(unreduced(self.adapter, self.params))  # FSDP reduces its own
            self._optimizer_step()
            self.pos.step += 1
            self.pos.losses.append(loss)
            if epoch_done:
                self.pos.epoch += 1
                self.pos.batch = 0
            self._after_step(loss, epoch_done)
            if self.pos.step >= self.total_steps or epoch_done:
                return
        if self.pos.batch < nb:
            raise RuntimeError(f"the dataset yielded {self.pos.batch} of its {nb} batches in epoch {self.pos.epoch}")

    def _forward_backward(self, batch: Batch, ga: int) -> torch.Tensor:
        cfg, model, schedule = self.cfg, self.model, self.model.schedule
        dev = model.device
        latents = batch.latents.to(dev, torch.float32)
        noise, t = self._noise_and_timesteps(latents, batch)
        if latents.shape[0] == 0:  # nothing of this global batch is ours: gradients stay as they are
            idle_pass(self.adapter, model, latents)  # FSDP: its collectives still need this rank
            return torch.zeros((), device=dev)
        with torch.set_grad_enabled(self.adapter.trains_text_encoders):
            context, pooled = self.text.encode(batch.captions, dev)
        y = model.adm(pooled, batch.original_sizes, batch.crop_top_left, batch.target_sizes)
        self.adapter.set_batch(batch)
        x_in = schedule.noisy_input(latents, noise, t)
        # an adapter that learns from a teacher model (distillation) supplies the target
        teacher = getattr(self.adapter, "teacher_prediction", None)
        target = teacher(x_in, t, context, y) if teacher is not None else schedule.target(latents, noise, t)
        pred = model.predict(x_in, t, context, y)
        c = huber_c(t, schedule.alphas_cumprod, cfg.huber_c, cfg.huber_schedule) if cfg.loss_type in ("huber", "smooth_l1") else None
        loss = per_sample_loss(pred, target, cfg.loss_type, c, batch.masks)
        if cfg.prior_loss_weight != 1.0 and any(batch.is_reg):
            w = torch.tensor([cfg.prior_loss_weight if r else 1.0 for r in batch.is_reg], device=loss.device)
            loss = loss * w
        weigh = getattr(schedule, "loss_weight", None)  # a schedule with its own loss weighting (Anima's weighting_scheme)
        if weigh is not None:
            loss = loss * weigh(t, cfg).to(loss.device)
        if cfg.min_snr_gamma:
            loss = loss * min_snr_weight(t, schedule.alphas_cumprod, cfg.min_snr_gamma, schedule.v_prediction).to(loss.device)
        # data-parallel: sum over this rank's part of the global batch, scaled so that the mean
        # of the ranks' gradients is the gradient of the global batch's mean loss
        loss = loss.sum() * (self.group.world / batch.global_size) if batch.global_size else loss.mean()
        scaled = loss / ga
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def _noise_and_timesteps(self, latents: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's noise and timesteps. For a rank's slice of a global batch they are drawn for
        the whole global batch (every rank draws the same) and sliced: the run equals one process
        with the global batch."""
        cfg, dev = self.cfg, self.model.device
        whole = latents
        if batch.global_size:
            channels = latents.shape[1] if latents.shape[0] else self.model.patcher.model.latent_format.latent_channels
            whole = latents.new_zeros((batch.global_size, channels, *latents.shape[2:]))
            if latents.shape[0]:
                whole[batch.offset:batch.offset + latents.shape[0]] = latents
        noise = training_noise(whole, self.generator, cfg.noise_offset, cfg.adaptive_noise_scale,
                               cfg.multires_noise_iterations, cfg.multires_noise_discount)
        draw = getattr(self.model.schedule, "draw_timesteps", None)  # a schedule that draws its own (Anima's flow)
        t = draw(whole.shape[0], cfg, self.generator, dev) if draw else sample_timesteps(
            whole.shape[0], cfg.min_timestep, cfg.max_timestep, self.generator, dev)
        if batch.global_size:
            mine = slice(batch.offset, batch.offset + latents.shape[0])
            noise, t = noise[mine], t[mine]
        return noise, t

    def _optimizer_step(self) -> None:
        if self.fused is not None:  # every weight was stepped in its gradient hook during the backward pass
            self.scheduler.step()
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.stepper.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _after_step(self, loss: float, epoch_done: bool) -> None:
        cfg, step = self.cfg, self.pos.step
        final = step >= self.total_steps
        if self.hooks.evaluate and (final or (cfg.validate_every_n_steps and step % cfg.validate_every_n_steps == 0)):
            self._evaluate()
        if self.hooks.progress:
            self.hooks.progress(step, self.total_steps, loss)
        if not final:
            if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0:
                self._save(self.output_dir / f"{cfg.output_name}-step{step:08d}.safetensors")
            if epoch_done and cfg.save_every_n_epochs and self.pos.epoch % cfg.save_every_n_epochs == 0:
                self._save(self.output_dir / f"{cfg.output_name}-{self.pos.epoch:06d}.safetensors")
        every_steps = cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0
        every_epochs = epoch_done and cfg.sample_every_n_epochs and self.pos.epoch % cfg.sample_every_n_epochs == 0
        if every_steps or every_epochs or (final and (cfg.sample_every_n_steps or cfg.sample_every_n_epochs)):
            self._sample()

    def _phase(self, text: str) -> None:
        if self.hooks.phase is not None:
            self.hooks.phase(text)

    def _check_interrupt(self) -> None:
        stop = None
        if self.hooks.check_interrupt is not None:
            try:
                self.hooks.check_interrupt()
            except BaseException as e:
                stop = e
        if self.group.any(stop is not None) and stop is None:
            stop = KeyboardInterrupt("another process of this data-parallel run was interrupted")
        if stop is not None:
            last = self.pos.saved[-1] if self.pos.saved else "none yet"
            log.info("training interrupted at step %d of %d; last saved file: %s", self.pos.step, self.total_steps, last)
            raise stop

    def _diverged(self, loss: float) -> None:
        last = self.pos.saved[-1] if self.pos.saved else "none yet"
        hint = " fp16 overflows easily: try bf16." if self.model.compute_dtype == torch.float16 else ""
        raise TrainingDiverged(
            f"training diverged: the loss is {loss} at step {self.pos.step + 1} (epoch {self.pos.epoch + 1}). "
            f"Lower the learning rate ({self.cfg.learning_rate}) or check the data.{hint} "
            f"Files saved so far are kept; the last one is {last}.")

    # -- held-out evaluation and samples ---------------------------------------------------

    def _evaluate(self) -> None:
        self.adapter.train(False)
        try:
            with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []), torch.no_grad():
                result = self.hooks.evaluate(self.pos.step)
        finally:
            self.adapter.train(True)
        self.pos.evaluations.append((self.pos.step, dict(result)))
        if self.hooks.evaluated:
            self.hooks.evaluated(self.pos.step, dict(result))

    def _sample(self) -> None:
        if self.sampler is None:
            return
        self._phase(f"sampling {len(self.sampler.prompts)} image(s) at step {self.pos.step}")
        self.adapter.train(False)
        try:
            # sampling seeds the global generator (comfy.sample): keep training's draws untouched
            with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []), torch.no_grad():
                images = self.sampler.render(self.pos.step, self.text)
        finally:
            self.adapter.train(True)
        self.samples.append((self.pos.step, images))
        if self.hooks.samples:
            self.hooks.samples(self.pos.step, images)

    # -- saving and resuming ---------------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        """The run's facts in sd-scripts' terms (an option that is off is None where sd-scripts'
        default is None), merged with the caller's (data, model name and files)."""
        import secrets  # here: this method alone makes the run's metadata

        cfg = self.cfg
        args = ",".join(f"{k}={v}" for k, v in cfg.optimizer_args.items())
        opt = type(self.optimizer)
        final = self.pos.step >= self.total_steps
        # sd-scripts: a random id per run, telling which run a set of saves came from
        self.facts.setdefault("session_id", secrets.randbelow(2**32 + 1))
        facts = {
            "training_started_at": self.started_at,
            "training_finished_at": time.time(),
            "output_name": cfg.output_name,
            "learning_rate": cfg.learning_rate,
            "unet_lr": cfg.unet_lr,
            "text_encoder_lr": cfg.text_encoder_lr,
            "optimizer": f"{opt.__module__}.{opt.__name__}" + (f"({args})" if args else ""),
            "lr_scheduler": cfg.lr_scheduler,
            "lr_warmup_steps": cfg.lr_warmup_steps,
            "max_grad_norm": cfg.max_grad_norm,
            "num_epochs": self.total_epochs,
            "max_train_steps": self.total_steps,
            "steps": self.pos.step,
            "epoch": self.total_epochs if final else self.pos.epoch,  # epochs done; the last save: all
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "mixed_precision": cfg.mixed_precision,
            "full_fp16": cfg.full_fp16,
            "fp8_base": cfg.fp8_base,
            "fp8_base_unet": cfg.fp8_base_unet,
            "clip_skip": cfg.clip_skip if cfg.clip_skip and cfg.clip_skip > 1 else None,  # 1 is the last layer: no skip
            "max_token_length": cfg.max_token_length,
            "cache_latents": cfg.cache_latents,
            "seed": cfg.seed,
            "noise_offset": cfg.noise_offset or None,
            "multires_noise_iterations": cfg.multires_noise_iterations or None,
            "multires_noise_discount": cfg.multires_noise_discount,
            "adaptive_noise_scale": cfg.adaptive_noise_scale or None,
            "zero_terminal_snr": cfg.zero_terminal_snr,
            "min_snr_gamma": cfg.min_snr_gamma or None,
            "loss_type": cfg.loss_type,
            "huber_schedule": cfg.huber_schedule,
            "huber_c": cfg.huber_c,
            "prior_loss_weight": cfg.prior_loss_weight,
            "training_comment": cfg.training_comment,
            "validate_every_n_steps": cfg.validate_every_n_steps or None,
            "prediction_type": self.model.schedule.prediction_type,
            "timestep_range": None if (cfg.min_timestep, cfg.max_timestep) == (0, 1000) else (cfg.min_timestep, cfg.max_timestep),
            **{f"metadata_{k}": getattr(cfg, f"metadata_{k}") for k in ("title", "author", "description", "license", "tags")},
            **self.facts,
        }
        # the files the model and a separate VAE came from: what the caller saw loaded, else the config's paths
        facts["sd_model_file"] = self.facts.get("sd_model_file") or cfg.pretrained_model_name_or_path
        facts["vae_file"] = self.facts.get("vae_file") or cfg.vae
        return self.make_metadata(facts)

    def _save(self, path: Path) -> Path:
        with full_weights(self.adapter):  # FSDP: every rank joins in gathering the weights rank 0 writes
            return self._write(path)

    def _write(self, path: Path) -> Path:
        cfg = self.cfg
        if not self.group.is_main:  # every rank holds the same weights; one writes them
            if path not in self.pos.saved:
                self.pos.saved.append(path)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.adapter.save(str(path), SAVE_DTYPES[cfg.save_dtype_name], self._metadata())
        final = path == self.output_dir / f"{cfg.output_name}.safetensors"
        wrote_state = cfg.save_state or (final and cfg.save_state_on_train_end)
        if wrote_state:
            save_state(state_path_for(path), self._state())
        if path not in self.pos.saved:
            self.pos.saved.append(path)
        state_size = f" (state {state_path_for(path).stat().st_size / 2**20:.1f} MB)" if wrote_state else ""
        log.info("saved %s at step %d%s", path, self.pos.step, state_size)
        self._phase(f"saved {path.name}{state_size}")
        self._prune_saves(path, wrote_state)
        return path

    def _prune_saves(self, path: Path, wrote_state: bool) -> None:
        """After saving `path`: remove this run's older saves as sd-scripts' save_last_n_* do
        (train_util.get_remove_step_no / get_remove_epoch_no): save_last_n_steps = N keeps the
        step saves of the last N steps (at step s those at steps <= s - N - 1, rounded down to a
        save step, go); save_last_n_epochs = N keeps the last N epoch saves. States follow
        save_last_n_*_state, else save_last_n_*; with none of the four set, only the newest
        state is kept (a state is ~6x the file: one is what resuming needs)."""
        cfg = self.cfg
        folder, name = (self.output_dir / cfg.output_name).parent, Path(cfg.output_name).name
        kind, number = _save_kind(path.name, name, ".safetensors")
        limits = {"step": (cfg.save_last_n_steps, cfg.save_last_n_steps_state or cfg.save_last_n_steps),
                  "epoch": (cfg.save_last_n_epochs, cfg.save_last_n_epochs_state or cfg.save_last_n_epochs)}

        def cut(n_last: int) -> int:  # saves of this kind numbered <= cut go; -1: none
            if not n_last or kind not in limits:
                return -1
            if kind == "step":
                r = number - n_last - 1
                return r - r % cfg.save_every_n_steps
            return number - cfg.save_every_n_epochs * n_last

        cut_file, cut_state = (cut(n) for n in limits.get(kind, (0, 0)))
        newest_state_only = wrote_state and not any(v for pair in limits.values() for v in pair)
        removed = []
        for f in list(folder.iterdir()) if folder.is_dir() else []:
            is_state = f.name.endswith(STATE_SUFFIX)
            f_kind, f_number = _save_kind(f.name, name, STATE_SUFFIX if is_state else ".safetensors")
            if f_kind is None or f == state_path_for(path) or not f.is_file():
                continue
            if (f_kind == kind and f_number is not None and f_number <= (cut_state if is_state else cut_file)) or (is_state and newest_state_only):
                f.unlink(missing_ok=True)
                removed.append(f)
        if removed:
            self.pos.saved = [p for p in self.pos.saved if p not in removed]
            log.info("removed older saves: %s", ", ".join(p.name for p in removed))

    def _state(self) -> dict:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {
            "adapter_kind": self.adapter.kind,
            "adapter": {k: v.detach().cpu().clone() for k, v in self.adapter.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.pos.step, "epoch": self.pos.epoch, "batch": self.pos.batch,
            "losses": list(self.pos.losses), "saved": [str(p) for p in self.pos.saved],
            "evaluations": list(self.pos.evaluations),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda,
            "total_steps": self.total_steps, "batches_per_epoch": len(self.data), "world": self.group.world,
            "config": self.cfg.to_dict(), "started_at": self.started_at,
        }

    def _load_state(self, path: str | Path) -> None:
        state = load_state(path)
        if state["adapter_kind"] != self.adapter.kind:
            raise ValueError(f"{path}: a {state['adapter_kind']} training state cannot resume {self.adapter.kind} training")
        old_world = state.get("world", 1)
        if old_world == self.group.world and state["batches_per_epoch"] != len(self.data):
            raise ValueError(f"{path}: saved with {state['batches_per_epoch']} batches per epoch, the dataset now has "
                             f"{len(self.data)}: resume with the same dataset and batch size")
        old = state["config"]
        changed = sorted(k for k, v in self.cfg.to_dict().items()
                         if k not in ("resume", "max_train_steps", "max_train_epochs") and old.get(k) != v)
        if changed:
            log.warning("resuming %s with changed options %s: the run will differ from an uninterrupted one", path, changed)
        self.adapter.load_state_dict(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        batch = state["batch"]
        if old_world != self.group.world:
            # another number of processes makes other global batches: the epoch goes on from the
            # same fraction of its samples (the step count and the optimizer state carry over)
            batch = round(batch * len(self.data) / state["batches_per_epoch"])
            log.warning("resuming a %d-process run with %d processes: epoch %d continues at batch %d of %d", old_world,
                        self.group.world, state["epoch"] + 1, batch, len(self.data))
        self.pos = _Position(state["step"], state["epoch"], batch, list(state["losses"]), [Path(p) for p in state["saved"]],
                             list(state.get("evaluations", [])))
        self.started_at = state["started_at"]
        log.info("resumed from %s at step %d (epoch %d)", path, self.pos.step, self.pos.epoch)


def _save_kind(file_name: str, output_name: str, suffix: str) -> tuple[str | None, int | None]:
    """("step", n) for <name>-step<n:08d><suffix>, ("epoch", n) for <name>-<n:06d><suffix>,
    ("final", None) for <name><suffix>; (None, None) for any other file (another run's)."""
    import re

    m = re.fullmatch(re.escape(output_name) + r"(?:-step(\d{8})|-(\d{6}))?" + re.escape(suffix), file_name)
    if m is None:
        return None, None
    if m.group(1):
        return "step", int(m.group(1))
    return ("epoch", int(m.group(2))) if m.group(2) else ("final", None)
