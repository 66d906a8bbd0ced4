"""The Anima DiT made trainable for the one engine (training/engine.py), standing in for
comfy_bridge's TrainingModel: the model's own flow-matching schedule and how to call the DiT.

Flow matching as ComfyUI samples Anima (ModelSamplingDiscreteFlow, shift 3) and sd-scripts
trains it: for the integer timestep t the noise level is the model's own sigmas[t]; the DiT
input is (1 - s) x0 + s n, its target the velocity n - x0, and it is called with s (the
model's timestep(s), multiplier 1). Which t a step trains is drawn as sd-scripts draws it
(timesteps.py). Latents are kept 4-D (B, 16, h, w) like sd-scripts; the DiT gets them as one
frame (B, 16, 1, h, w).
"""
from contextlib import contextmanager

import torch

import comfy.ldm.cosmos.predict2
import comfy.model_base
import comfy.model_management
import comfy.model_sampling

from ..comfy_bridge.model import PatchedModel, UnsupportedModel, _compute_dtype, make_autograd_safe, set_gradient_checkpointing
from .timesteps import draw_noise_levels, loss_weighting, nearest_timesteps

DIT_BLOCKS = (comfy.ldm.cosmos.predict2.Block,)  # what gradient checkpointing recomputes
DEFAULT_SAMPLING = "sigmoid"  # sd-scripts' default for Anima (with sigmoid_scale 1, discrete_flow_shift 1)


_ROPE_OP = "comfy_kitchen::rms_rope_split_half"
_rope_backward_registered = False


def _enable_rope_backward() -> None:
    """core's Cosmos/Anima self-attention runs comfy_kitchen's fused RMSNorm + RoPE op, which has
    no autograd formula (inference only): give it one, the gradient of comfy_kitchen's own eager
    implementation of the same function, so gradients reach modules before q_proj/k_proj."""
    global _rope_backward_registered
    if _rope_backward_registered:
        return
    from comfy_kitchen.backends.eager import rope

    def setup_context(ctx, inputs, output):
        q, k, freqs, q_scale, k_scale, eps, rot_dim = inputs
        ctx.save_for_backward(q, k, freqs, q_scale, k_scale)
        ctx.eps, ctx.rot_dim = eps, rot_dim

    def backward(ctx, grad_q, grad_k):
        q, k, freqs, q_scale, k_scale = ctx.saved_tensors
        with torch.enable_grad():
            q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
            out = rope.rms_rope_split_half(q, k, freqs, q_scale, k_scale, ctx.eps, ctx.rot_dim)
            gq, gk = torch.autograd.grad(out, (q, k), (grad_q, grad_k))
        return gq, gk, None, None, None, None, None

    torch.library.register_autograd(_ROPE_OP, backward, setup_context=setup_context)
    _rope_backward_registered = True


class FlowSchedule:
    # the model predicts a velocity, but this is what sd-scripts' sai_model_spec writes into Anima
    # files' modelspec.prediction_type (only Flux is exempt), and the metadata writers follow it
    prediction_type = "epsilon"
    v_prediction = False

    def __init__(self, model_sampling):
        if not isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
            raise UnsupportedModel(f"Anima training needs its flow schedule; the model uses {type(model_sampling).__name__}")
        self.model_sampling = model_sampling
        self.sigmas = model_sampling.sigmas.detach().float().cpu().clone()
        self.num_timesteps = len(self.sigmas)
        # the same signal-to-noise ratio ((1 - s) / s)^2 as a DDPM alpha, for min-SNR and Huber schedules
        self.alphas_cumprod = (1 - self.sigmas) ** 2 / ((1 - self.sigmas) ** 2 + self.sigmas ** 2)

    def draw_timesteps(self, n: int, cfg, generator: torch.Generator, device) -> torch.Tensor:
        """The engine's timesteps for one step, drawn as sd-scripts draws Anima's (timesteps.py:
        cfg.timestep_sampling, default "sigmoid"; sigmoid_scale; discrete_flow_shift)."""
        levels = draw_noise_levels(n, cfg.timestep_sampling or DEFAULT_SAMPLING, cfg.sigmoid_scale, cfg.discrete_flow_shift,
                                   generator, cfg.min_timestep, cfg.max_timestep, cfg.weighting_scheme, cfg.logit_mean,
                                   cfg.logit_std, cfg.mode_scale)
        return nearest_timesteps(levels, self.sigmas).to(device)

    def loss_weight(self, timesteps: torch.Tensor, cfg) -> torch.Tensor:
        """Per-sample loss weights of cfg.weighting_scheme at the trained noise levels (timesteps.py)."""
        return loss_weighting(cfg.weighting_scheme, self.sigmas[timesteps.cpu()])

    def sigma(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(like.device)[timesteps.cpu()].to(like.device).view(-1, *([1] * (like.ndim - 1)))

    def noisy_input(self, latents, noise, timesteps):
        s = self.sigma(timesteps, latents)
        return (1 - s) * latents.float() + s * noise.float()

    def target(self, latents, noise, timesteps):
        return noise.float() - latents.float()


class AnimaTrainingModel(PatchedModel):
    family = "anima"

    def __init__(self, patcher, compute_dtype: torch.dtype):
        self.patcher = patcher
        self.schedule = FlowSchedule(patcher.get_model_object("model_sampling"))
        self.compute_dtype = compute_dtype

    def predict(self, x_in, timesteps, context, y=None, transformer_options=None) -> torch.Tensor:
        """The DiT's velocity (float32, same shape as x_in) for integer timesteps."""
        dtype = self.compute_dtype if self.compute_dtype != torch.float32 else self.patcher.model.get_dtype_inference()
        x = x_in if x_in.ndim == 5 else x_in.unsqueeze(2)
        sigma = self.schedule.sigma(timesteps, x).flatten()
        with self.autocast():
            out = self.diffusion_model(x.to(self.device, dtype), sigma.to(self.device), context.to(self.device, dtype),
                                       transformer_options=dict(transformer_options or {}))
        return out.float().reshape(x_in.shape)

    def adm(self, *args) -> None:
        return None  # Anima has no class-embedding input

    def close(self) -> None:
        pass


@contextmanager
def trainable_anima(model, mixed_precision: str = "no", gradient_checkpointing: bool = False,
                    v_parameterization: bool = False, zero_terminal_snr: bool = False, fp8_base: bool = False):
    """The Anima model prepared for training (see comfy_bridge.trainable_model, which it follows,
    with the same arguments); options not implemented for Anima are refused by name.
    gradient_checkpointing: every DiT block (cosmos predict2 Block) is recomputed in backward."""
    refused = [name for name, on in (("v_parameterization", v_parameterization),
                                     ("zero_terminal_snr", zero_terminal_snr), ("fp8_base", fp8_base)) if on]
    if refused:
        raise UnsupportedModel(f"Anima training: {', '.join(refused)} not supported yet (flow-matching DiT); turn it off")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("trainable_anima must be used under torch.inference_mode(False)")
    if not isinstance(model.model, comfy.model_base.Anima):
        raise UnsupportedModel(f"not an Anima model: {type(model.model).__name__}")
    _enable_rope_backward()
    patcher = model.clone(disable_dynamic=True, force_deepcopy=True) if model.is_dynamic() else model.clone()
    comfy.model_management.load_models_gpu([patcher], memory_required=1e20, force_full_load=True)
    dm = patcher.model.diffusion_model
    make_autograd_safe(dm)
    dm.train(False)
    if gradient_checkpointing:
        set_gradient_checkpointing(dm, True, DIT_BLOCKS)
    try:
        yield AnimaTrainingModel(patcher, _compute_dtype(mixed_precision, patcher.model.get_dtype_inference()))
    finally:
        set_gradient_checkpointing(dm, False, DIT_BLOCKS)


def is_anima(model) -> bool:
    """Whether a MODEL (ModelPatcher) is an Anima DiT (trained through this module)."""
    return isinstance(getattr(model, "model", None), comfy.model_base.Anima)


def frame_latents(encode):
    """Images encoded one by one (the Wan-layout VAE reads a batch as the frames of one video)
    into (B, 16, h, w): the (1, 16, 1, h, w) latents as sd-scripts keeps them."""
    def flat(images):
        latents = [encode(images[i:i + 1]) for i in range(images.shape[0])]
        return torch.cat([lat.squeeze(2) if lat.ndim == 5 else lat for lat in latents])
    return flat
