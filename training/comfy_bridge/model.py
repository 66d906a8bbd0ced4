"""The one place that knows ComfyUI's model objects (ModelPatcher, CLIP, VAE). Everything else
in training/ takes plain tensors and modules from here.

- trainable_model(): the diffusion model made safe for autograd inside a graph (ComfyUI runs
  nodes under torch.inference_mode(), whose weights autograd refuses to save for backward),
  loaded on the training device, with its own noise schedule and prediction function.
- TextConditioner: captions -> cross-attention context and SDXL's pooled output, cached per
  caption when the text encoders are frozen; SDXL's ADM vector from the size conditioning.
- latent_encoder(): the VAE as `images in [-1, 1] -> scaled latents`, plus an identity for
  latent caches.
- release(): text encoders and VAE off the training device once their outputs are cached.
"""
import hashlib
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

import comfy.clip_model
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.sd
import folder_paths
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

from ..errors import user_error


@user_error
class UnsupportedModel(ValueError):
    pass


def model_family(patcher: comfy.model_patcher.ModelPatcher) -> str:
    """"sdxl", "sd15" (SD1.x) or "sd2" (SD2.x): the U-Net families this trainer handles."""
    model = patcher.model
    if not isinstance(getattr(model, "diffusion_model", None), UNetModel):
        raise UnsupportedModel(f"training supports SD1.x, SD2.x and SDXL U-Nets; this model is {type(model).__name__}")
    if isinstance(model, comfy.model_base.SDXL):
        return "sdxl"
    if type(model) is comfy.model_base.BaseModel:
        return "sd2" if model.model_config.unet_config.get("context_dim") == 1024 else "sd15"
    raise UnsupportedModel(f"training supports SD1.x, SD2.x and SDXL base models; this model is {type(model).__name__}")


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

def _make_autograd_safe(module: torch.nn.Module) -> None:
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


def set_gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool) -> int:
    """Checkpoint every res block and transformer block (what sd-scripts does through
    diffusers). ComfyUI's own use_checkpoint flag is not used: its checkpoint function only
    passes the block's own parameters to autograd, so hooked adapter weights would get no
    gradient. Returns the number of blocks changed."""
    count = 0
    for m in diffusion_model.modules():
        if not isinstance(m, (ResBlock, BasicTransformerBlock)):
            continue
        wrapped = isinstance(m.__dict__.get("forward"), _CheckpointedForward)
        if enabled and not wrapped:
            m.forward = _CheckpointedForward(m)
            count += 1
        elif not enabled and wrapped:
            del m.forward
            count += 1
    return count


@dataclass
class TrainingModel:
    """The frozen diffusion model ready for training, and how to call it."""

    patcher: comfy.model_patcher.ModelPatcher
    schedule: NoiseSchedule
    family: str
    compute_dtype: torch.dtype  # autocast dtype; float32 means no autocast

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

    def predict(self, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """Raw U-Net output (eps or v, float32) for the already scaled input `x_in`: the call
        ComfyUI's BaseModel._apply_model makes, minus its conversion to a denoised image."""
        dtype = self.compute_dtype if self.compute_dtype != torch.float32 else self.patcher.model.get_dtype_inference()
        dev = self.device
        with self.autocast():
            out = self.diffusion_model(
                x_in.to(dev, dtype), timesteps.to(dev).float(), context=context.to(dev, dtype),
                y=None if y is None else y.to(dev, dtype), control=None,
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


def model_source_name(patcher: comfy.model_patcher.ModelPatcher) -> str:
    """The checkpoint file a loader made this model from (ss_sd_model_name), or ""."""
    init = getattr(patcher, "cached_patcher_init", None)
    for arg in (init[1] if init else ()):
        if isinstance(arg, str) and arg.lower().endswith((".safetensors", ".ckpt", ".pt", ".sft", ".gguf")):
            return os.path.basename(arg)
    return ""


def model_file(patcher: comfy.model_patcher.ModelPatcher) -> str | None:
    """Full path of the checkpoint or diffusion-model file a core loader made this model from
    (its reload factory keeps it), or None (ss_sd_model_hash needs the file)."""
    init = getattr(patcher, "cached_patcher_init", None)
    if init and init[0] in (comfy.sd.load_checkpoint_guess_config, comfy.sd.load_diffusion_model):
        return init[1][0]
    return None


def vae_file(vae) -> str | None:
    """Full path of the separate VAE file Load VAE read, or None, also for a checkpoint's own
    VAE (sd-scripts writes ss_vae_* only for a separate --vae)."""
    init = getattr(getattr(vae, "patcher", None), "cached_patcher_init", None)
    return init[1][0] if init and init[0] is comfy.sd.load_vae_patcher else None


def default_output_dir() -> str:
    """ComfyUI's (first) loras folder, where LoraLoader finds the trained file."""
    return folder_paths.get_folder_paths("loras")[0]


def latent_cache_dir() -> str:
    """On-disk latent cache: under ComfyUI's output folder, outside every model folder (its
    .safetensors entries must not show up in a loader's list)."""
    return os.path.join(folder_paths.get_output_directory(), "lllite_kit", "latent_cache")


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
def trainable_model(model: comfy.model_patcher.ModelPatcher, mixed_precision: str = "no", gradient_checkpointing: bool = False,
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
    family = model_family(model)
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
    _make_autograd_safe(diffusion_model)
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


# -- text -------------------------------------------------------------------------------

def text_encoder_modules(clip: comfy.sd.CLIP, family: str) -> dict[str, torch.nn.Module]:
    """The CLIP transformers by their kohya role: te1 (CLIP-L) / te2 (CLIP-G) on SDXL, te
    (CLIP-L, or OpenCLIP-H on SD2) on SD1.x/2.x."""
    csm = clip.cond_stage_model
    if family == "sdxl":
        return {"te1": csm.clip_l.transformer, "te2": csm.clip_g.transformer}
    return {"te": getattr(csm, csm.clip).transformer}


def _lcm_repeat(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Batch contexts of different token lengths (long captions give 77 x k tokens) the way
    ComfyUI batches conds when sampling: each repeated up to the least common multiple."""
    lengths = [c.shape[1] for c in contexts]
    lcm = math.lcm(*lengths)
    return torch.cat([c.repeat(1, lcm // c.shape[1], 1) for c in contexts])


class _OutOfPlaceClipLayer:
    """ComfyUI's CLIPLayer adds its residuals in place (x += ...), which autograd refuses once
    the layer norm saved x for backward; the same sums out of place, for trained encoders."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, mask=None, optimized_attention=None):
        layer = self.layer
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))


def _set_clip_trainable_forward(module: torch.nn.Module, enabled: bool) -> None:
    for m in module.modules():
        if isinstance(m, comfy.clip_model.CLIPLayer):
            if enabled:
                m.forward = _OutOfPlaceClipLayer(m)
            elif isinstance(m.__dict__.get("forward"), _OutOfPlaceClipLayer):
                del m.forward


class TextConditioner:
    """Captions -> (context, pooled). Frozen encoders: outputs are computed without gradients
    and kept per caption for captions given to precompute() (the fixed captions of a dataset,
    the sample prompts); `release()` then lets the encoders leave the device. Trained
    encoders (adapter.trains_text_encoders): every call encodes with gradients.

    Captions: ComfyUI's tokenizer splits text into 77-token windows (start, up to 75 tokens,
    end; a word of under 8 tokens is not split, so a window may hold fewer) and the encoder
    concatenates the windows' outputs. max_tokens (75/150/225, sd-scripts' max_token_length)
    keeps the first 1/2/3 windows; None keeps all. caption_weights: ComfyUI's (word:1.2)
    emphasis in captions (sd-scripts' weighted_captions); off, brackets are plain text.
    Sample prompts (prompts=True) are encoded as ComfyUI encodes a prompt: every window, weights on."""

    def __init__(self, clip: comfy.sd.CLIP, family: str, trainable: bool = False, clip_skip: int = 1,
                 max_tokens: int | None = None, caption_weights: bool = True):
        if max_tokens is not None and (max_tokens < 75 or max_tokens % 75):
            raise ValueError(f"max_tokens must be a multiple of 75 (75, 150, 225), not {max_tokens}")
        self.max_windows = None if max_tokens is None else max_tokens // 75
        self.caption_weights = caption_weights
        self.clip = clip.clone()
        if clip_skip > 1 and family != "sdxl":  # SDXL always uses the penultimate layers
            self.clip.clip_layer(-clip_skip)
        self.family = family
        self.trainable = trainable
        self.cache: dict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor | None]] = {}  # (prompts, text)
        if trainable:
            if torch.is_inference_mode_enabled():
                raise RuntimeError("a trainable text encoder must be prepared under torch.inference_mode(False)")
            _make_autograd_safe(self.clip.cond_stage_model)
            _set_clip_trainable_forward(self.clip.cond_stage_model, True)

    def close(self) -> None:
        """Undo what training needed on the shared encoder modules."""
        if self.trainable and self.clip is not None:
            _set_clip_trainable_forward(self.clip.cond_stage_model, False)

    def modules(self) -> dict[str, torch.nn.Module]:
        return text_encoder_modules(self.clip, self.family)

    def tokenize(self, text: str, prompts: bool = False) -> dict:
        """ComfyUI's tokens of `text` ({encoder: [77-token windows]}), cut to max_tokens for captions."""
        if prompts:
            return self.clip.tokenize(text)
        tokens = self.clip.tokenize(text, disable_weights=not self.caption_weights)
        return tokens if self.max_windows is None else {k: v[:self.max_windows] for k, v in tokens.items()}

    def _encode_one(self, caption: str, prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.clip is None:
            raise RuntimeError(f"caption {caption!r} was not encoded before the text encoders were released")
        cond, pooled = self.clip.encode_from_tokens(self.tokenize(caption, prompts), return_pooled=True)
        return cond, (pooled if self.family == "sdxl" else None)

    def precompute(self, captions, prompts: bool = False) -> None:
        with torch.no_grad():
            for c in captions:
                if (prompts, c) not in self.cache:
                    cond, pooled = self._encode_one(c, prompts)
                    self.cache[(prompts, c)] = (cond.detach().cpu(), None if pooled is None else pooled.detach().cpu())

    def encode(self, captions: list[str], device, prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Captions (prompts=False) or sample prompts (prompts=True) -> (context, pooled) on `device`."""
        outs = []
        for c in captions:
            if not self.trainable and (prompts, c) in self.cache:
                outs.append(self.cache[(prompts, c)])
            else:
                with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
                    outs.append(self._encode_one(c, prompts))
        context = _lcm_repeat([o[0].to(device) for o in outs])
        pooled = None if outs[0][1] is None else torch.cat([o[1].to(device) for o in outs])
        return context, pooled

    def release(self) -> None:
        """Frozen encoders whose every caption is cached: off the device, reference dropped."""
        if self.trainable or self.clip is None:
            return
        unload_from_device(self.clip.patcher)
        self.clip = None


# -- VAE ----------------------------------------------------------------------------------

def vae_identity(vae: comfy.sd.VAE, latent_format) -> str:
    """A short id of the VAE's weights and the latent scaling, so cached latents are only
    reused with the VAE (and model family) that made them."""
    h = hashlib.sha256()
    h.update(f"{type(latent_format).__name__}:{latent_format.scale_factor}:{getattr(latent_format, 'shift_factor', 0)}".encode())
    for name, t in sorted(vae.first_stage_model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        # a strided sample of every tensor: cheap on a 160 MB VAE, and any real change shows
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


@contextmanager
def _vae_in_float32(vae: comfy.sd.VAE):
    """The VAE's weights and compute in float32 for a while (sd-scripts' no_half_vae); half
    weights widen and narrow back exactly, so the shared VAE is unchanged afterwards."""
    dtype = vae.vae_dtype
    if dtype == torch.float32:
        yield
        return
    vae.first_stage_model.to(torch.float32)
    vae.vae_dtype = torch.float32
    try:
        yield
    finally:
        vae.first_stage_model.to(dtype)
        vae.vae_dtype = dtype


def latent_encoder(vae: comfy.sd.VAE, latent_format, no_half_vae: bool = False):
    """images (B, 3, H, W) in [-1, 1] -> latents multiplied by the model's scale factor (what
    the U-Net is trained on), on the CPU. no_half_vae: encoded in float32 whatever dtype
    ComfyUI picked for the VAE (a half-precision VAE can overflow to NaN on some images)."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), (_vae_in_float32(vae) if no_half_vae else nullcontext()):
            pixels = ((images.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)
            latents = vae.encode(pixels)
            return latent_format.process_in(latents).float().cpu()

    return encode


def unload_from_device(patcher) -> None:
    """Move one model (a CLIP or VAE patcher) off its device through model management."""
    loaded = comfy.model_management.current_loaded_models
    for i in range(len(loaded) - 1, -1, -1):
        m = loaded[i].model
        if m is not None and (m is patcher or m.is_clone(patcher)) and loaded[i].model_unload():
            loaded.pop(i)
    comfy.model_management.soft_empty_cache()
