"""The diffusion model made trainable: which models the trainer takes (trainable_family), the
model's own noise schedule (NoiseSchedule), and trainable_model(), the model safe for autograd
inside a graph (ComfyUI runs nodes under torch.inference_mode(), whose weights autograd refuses
to save for backward), loaded on the training device, with gradient checkpointing and an fp8
base on request. Models go on and off the training device through ComfyUI's model management.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.utils.checkpoint

import comfy.model_base
import comfy.model_management
import comfy.model_sampling
import comfy.ops
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ...errors import user_error
from ...model_family import model_family

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher


@user_error
class UnsupportedModel(ValueError):
    pass


def trainable_family(patcher: ModelPatcher) -> str:
    """The model's family (model_family.py: "sdxl", "sd15" or "sd2") when it is the plain
    text-to-image U-Net this trainer feeds: noisy latents, the text context and SDXL's ADM vector,
    nothing else. Variants with other inputs (inpainting, instruct-pix2pix, unCLIP, Lotus, x4
    upscaler) and every other architecture are refused."""
    model = patcher.model
    family = model_family(model)
    plain = comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel
    if family is None or type(model) is not plain or model.model_config.inpaint_model():
        raise UnsupportedModel(f"training supports SD1.x, SD2.x and SDXL text-to-image U-Nets; this model is "
                               f"{type(model.model_config).__name__} ({type(model).__name__})")
    return family


# -- noise schedule ------------------------------------------------------------------------

class NoiseSchedule:
    """The model's own discrete schedule (ComfyUI's ModelSamplingDiscrete): sigmas per integer
    timestep, alphas_cumprod = 1 / (1 + sigma^2), and its prediction type.

    The U-Net input for clean latents x0, noise n and timestep t is
    sqrt(a_t) x0 + sqrt(1 - a_t) n: exactly ComfyUI's calculate_input(noise_scaling(...)),
    i.e. what the model sees when it samples."""

    def __init__(self, model_sampling):
        ms = model_sampling
        if not isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) or isinstance(ms, comfy.model_sampling.ModelSamplingDiscreteEDM):
            raise UnsupportedModel(f"training needs a discrete DDPM noise schedule; the model uses {type(ms).__name__}")
        if len(ms.sigmas) != ms.num_timesteps:
            raise UnsupportedModel(f"training needs the full {ms.num_timesteps}-step schedule, the model's has {len(ms.sigmas)} (a distilled sampling patch?)")
        if isinstance(ms, comfy.model_sampling.V_PREDICTION) and not isinstance(ms, comfy.model_sampling.EDM):
            self.v_prediction = True
        elif isinstance(ms, comfy.model_sampling.EPS) and type(ms).calculate_denoised is comfy.model_sampling.EPS.calculate_denoised:
            self.v_prediction = False
        else:
            raise UnsupportedModel(f"training supports epsilon and v-prediction models; this model's sampling is {type(ms).__mro__[1:3]}")
        self.model_sampling = ms
        self.sigmas = ms.sigmas.detach().float().cpu().clone()
        self.alphas_cumprod = 1.0 / (1.0 + self.sigmas**2)
        self.num_timesteps = len(self.sigmas)

    def _coefs(self, timesteps: torch.Tensor, like: torch.Tensor):
        a = self.alphas_cumprod.to(like.device)[timesteps].view(-1, *([1] * (like.ndim - 1)))
        return a.sqrt(), (1 - a).sqrt()

    def noisy_input(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(timesteps, latents)
        return sa * latents.float() + s1a * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model should output: the noise (eps) or the velocity sqrt(a) n - sqrt(1-a) x0."""
        if not self.v_prediction:
            return noise
        sa, s1a = self._coefs(timesteps, latents)
        return sa * noise - s1a * latents.float()

    @property
    def prediction_type(self) -> str:
        return "v" if self.v_prediction else "epsilon"


def _discrete_sampling(model_config, v_prediction: bool, zsnr: bool):
    """A sampling object like core's ModelSamplingDiscrete node makes (eps / v_prediction, zsnr)."""
    base = comfy.model_sampling.V_PREDICTION if v_prediction else comfy.model_sampling.EPS

    class ModelSamplingTraining(comfy.model_sampling.ModelSamplingDiscrete, base):
        pass

    return ModelSamplingTraining(model_config, zsnr=zsnr)


# -- the diffusion model -------------------------------------------------------------------

def make_autograd_safe(module: torch.nn.Module) -> None:
    """Replace inference tensors (created under torch.inference_mode) by ordinary copies with
    the same values, so autograd can save them for backward. Frozen: no grad."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and (p.is_inference() or p.requires_grad):
                m._parameters[name] = torch.nn.Parameter(p.detach().clone() if p.is_inference() else p.detach(), requires_grad=False)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


class _CheckpointedForward:
    """Gradient checkpointing of one block (torch.utils.checkpoint, non-reentrant, so hooked
    adapter weights get their gradients). ComfyUI blocks write into transformer_options while
    they run; the recomputation in backward must see the options as they were at the first
    call, and the caller must see the writes of the first call."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.original = module.forward

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.original(*args, **kwargs)
        snap_args = [dict(a) if isinstance(a, dict) else a for a in args]
        snap_kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
        first_call = {}

        def run():
            call_args = [dict(a) if isinstance(a, dict) else a for a in snap_args]
            call_kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in snap_kwargs.items()}
            out = self.original(*call_args, **call_kwargs)
            first_call.setdefault("args", (call_args, call_kwargs))
            return out

        out = torch.utils.checkpoint.checkpoint(run, use_reentrant=False)
        call_args, call_kwargs = first_call["args"]
        for a, c in zip(args, call_args):
            if isinstance(a, dict):
                a.update(c)
        for k, v in kwargs.items():
            if isinstance(v, dict):
                v.update(call_kwargs[k])
        return out


def set_gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool,
                               block_types: tuple = (ResBlock, BasicTransformerBlock)) -> int:
    """Checkpoint every block of `block_types` (the U-Net's res and transformer blocks: what
    sd-scripts does through diffusers). ComfyUI's own use_checkpoint flag is not used: its
    checkpoint function only passes the block's own parameters to autograd, so hooked adapter
    weights would get no gradient. Returns the number of blocks changed."""
    count = 0
    for m in diffusion_model.modules():
        if not isinstance(m, block_types):
            continue
        wrapped = isinstance(m.__dict__.get("forward"), _CheckpointedForward)
        if enabled and not wrapped:
            m.forward = _CheckpointedForward(m)
            count += 1
        elif not enabled and wrapped:
            del m.forward
            count += 1
    return count


class PatchedModel:
    """What every training model (U-Net here, Anima's DiT in anima/model.py) reads from its
    ModelPatcher `patcher` and autocast dtype `compute_dtype` (float32 means no autocast)."""

    patcher: ModelPatcher
    compute_dtype: torch.dtype

    @property
    def diffusion_model(self) -> torch.nn.Module:
        return self.patcher.model.diffusion_model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    @property
    def model_config(self):
        return self.patcher.model.model_config

    def autocast(self):
        enabled = self.compute_dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled)


@dataclass
class TrainingModel(PatchedModel):
    """The frozen diffusion model ready for training, and how to call it."""

    patcher: ModelPatcher
    schedule: NoiseSchedule
    family: str
    compute_dtype: torch.dtype  # autocast dtype; float32 means no autocast

    def predict(self, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
                transformer_options: dict | None = None, control: dict | None = None) -> torch.Tensor:
        """Raw U-Net output (eps or v, float32) for the already scaled input `x_in`: the call
        ComfyUI's BaseModel._apply_model makes, minus its conversion to a denoised image.
        control: a core ControlNet's residuals (ControlBase.get_control), as in sampling."""
        dtype = self.compute_dtype if self.compute_dtype != torch.float32 else self.patcher.model.get_dtype_inference()
        dev = self.device
        with self.autocast():
            out = self.diffusion_model(
                x_in.to(dev, dtype), timesteps.to(dev).float(), context=context.to(dev, dtype),
                y=None if y is None else y.to(dev, dtype), control=control,
                transformer_options=dict(transformer_options or {}),
            )
        return out.float()

    def adm(self, pooled: torch.Tensor | None, original_sizes, crop_top_left, target_sizes) -> torch.Tensor | None:
        """SDXL's class-embedding input: pooled CLIP-G output + embedded original size, crop and
        target size ((height, width) pixel pairs per sample), via the model's own encode_adm.
        None for models without it (SD1.x/2.x)."""
        if self.family != "sdxl":
            return None
        rows = []
        for i in range(pooled.shape[0]):
            (oh, ow), (ct, cl), (th, tw) = original_sizes[i], crop_top_left[i], target_sizes[i]
            rows.append(self.patcher.model.encode_adm(
                pooled_output=pooled[i:i + 1].float().cpu(), width=ow, height=oh, crop_w=cl, crop_h=ct,
                target_width=tw, target_height=th))
        return torch.cat(rows).to(self.device)

    def close(self) -> None:
        set_gradient_checkpointing(self.diffusion_model, False)


def _compute_dtype(mixed_precision: str, weight_dtype: torch.dtype) -> torch.dtype:
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16":
        return torch.bfloat16
    # "no": the model's own precision; a half-precision model is still run under autocast
    return weight_dtype if weight_dtype in (torch.float16, torch.bfloat16) else torch.float32


def _store_weights_in_fp8(diffusion_model: torch.nn.Module):
    """fp8_base: every matrix weight (Linear, Conv) of the frozen U-Net stored in float8_e4m3fn and
    cast to the input's dtype at each use, the way ComfyUI runs a model loaded with an fp8
    weight_dtype (comfy.ops' comfy_cast_weights). Biases and norm gains keep their dtype: under 1%
    of the bytes, and the values 8 bits would hurt most. The original weights wait on the CPU;
    the returned function puts them back."""
    stored = []
    for m in diffusion_model.modules():
        w = m._parameters.get("weight") if isinstance(m, comfy.ops.CastWeightBiasOp) else None
        if w is None or w.ndim < 2 or not w.is_floating_point():
            continue
        stored.append((m, w, w.device, m.__dict__.get("comfy_cast_weights")))
        m.weight = torch.nn.Parameter(w.detach().to(torch.float8_e4m3fn), requires_grad=False)
        m.comfy_cast_weights = True
        w.data = w.data.cpu()

    def restore():
        for m, w, device, cast in stored:
            w.data = w.data.to(device)
            m.weight = w
            if cast is None:
                del m.comfy_cast_weights
            else:
                m.comfy_cast_weights = cast

    return restore


@contextmanager
def trainable_model(model: ModelPatcher, mixed_precision: str = "no", gradient_checkpointing: bool = False,
                    v_parameterization: bool = False, zero_terminal_snr: bool = False, fp8_base: bool = False):
    """Context: the model prepared for training (see TrainingModel); on exit the shared model
    is as it was (checkpointing removed; weights keep their values).

    Inside a graph ComfyUI runs nodes under torch.inference_mode(); this must be entered
    under torch.inference_mode(False). Inference-tensor weights are replaced in place by
    ordinary tensors with the same values (no second copy of the model in memory); a
    dynamic-VRAM model is rebuilt from its loader (cached_patcher_init), as core's trainer does.
    fp8_base: the U-Net's matrix weights held in float8 while training (see _store_weights_in_fp8),
    computed in the mixed-precision dtype (float32 with mixed_precision "no")."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("trainable_model must be used under torch.inference_mode(False)")
    family = trainable_family(model)
    if model.is_dynamic():
        patcher = model.clone(disable_dynamic=True, force_deepcopy=True)
    else:
        patcher = model.clone()
    if v_parameterization or zero_terminal_snr:
        v_prediction = v_parameterization or NoiseSchedule(patcher.get_model_object("model_sampling")).v_prediction
        patcher.add_object_patch("model_sampling", _discrete_sampling(patcher.model.model_config, v_prediction, zero_terminal_snr))
    schedule = NoiseSchedule(patcher.get_model_object("model_sampling"))
    # evict everything else (text encoders, VAE, other models) from the training device
    comfy.model_management.load_models_gpu([patcher], memory_required=1e20, force_full_load=True)
    diffusion_model = patcher.model.diffusion_model
    make_autograd_safe(diffusion_model)
    diffusion_model.train(False)  # no dropout in the frozen model; adapters switch their own
    weight_dtype = patcher.model.get_dtype_inference()
    tm = TrainingModel(patcher, schedule, family, _compute_dtype(mixed_precision, weight_dtype))
    restore_weights = _store_weights_in_fp8(diffusion_model) if fp8_base else None
    if gradient_checkpointing:
        set_gradient_checkpointing(diffusion_model, True)
    try:
        yield tm
    finally:
        tm.close()
        if restore_weights is not None:
            restore_weights()


def reload_training_model(tm: TrainingModel) -> None:
    """Put the training model back on its device after sampling or decoding moved things."""
    comfy.model_management.load_models_gpu([tm.patcher], force_full_load=True)


def unload_from_device(patcher) -> None:
    """Move one model (a CLIP or VAE patcher) off its device through model management."""
    loaded = comfy.model_management.current_loaded_models
    for i in range(len(loaded) - 1, -1, -1):
        m = loaded[i].model
        if m is not None and (m is patcher or m.is_clone(patcher)) and loaded[i].model_unload():
            loaded.pop(i)
    comfy.model_management.soft_empty_cache()
