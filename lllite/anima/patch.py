"""Applying Anima LLLites to a ComfyUI Anima MODEL through the DiT's patch points.

core's MiniTrainDIT calls attn1 patches (self-attention) and attn2 patches (cross-attention)
as `p(q, k, v, pe=, attn_mask=, extra_options=)` before q_proj/k_proj/v_proj, and mlp patches
as `p({"x", "transformer_options"})` before mlp.layer1, with the block index in the options:
exactly the inputs kohya's modules wrap. Like the SDXL path (lllite/patch.py), a patched model
holds ONE patch per point holding every applied Anima LLLite, whose deltas on the block's
original inputs are summed. The conditioning embedding is computed on first use per picture
size, device and dtype (from the token grid the patch sees) and reused across steps.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ...model_family import model_family
from .guide import conditioning_input
from .module import GUIDE_STRIDE, AnimaLLLiteNetwork, copy_to

_ATTN_TARGETS = {"attn1": {"q": "self_attn_q_proj", "k": "self_attn_k_proj", "v": "self_attn_v_proj"},
                 "attn2": {"q": "cross_attn_q_proj"}}
_CACHED_SIZES = 2  # picture sizes kept per control (e.g. a base pass and a hires pass)


class AnimaLLLiteControl:
    """One applied Anima LLLite: network, guide, strength, sigma range, mask."""

    def __init__(self, network: AnimaLLLiteNetwork, guide: torch.Tensor, strength: float,
                 sigma_range: tuple | None = None, resize_mode: str = "crop", mask: torch.Tensor | None = None):
        """guide (G, C, H, W) in 0..1. mask (M, H, W) in 0..1: for an inpainting file the region
        to repaint (its fourth guide channel); for the others where the control acts."""
        self.network = network
        self.guide = guide
        self.strength = float(strength)
        self.sigma_range = sigma_range
        self.resize_mode = resize_mode
        self.mask = None if mask is None else (mask if mask.ndim == 3 else mask[None]).float()[:, None]
        self._placed, self._placed_key = None, None
        self._sizes = OrderedDict()  # (device, dtype, h, w, grad) -> (embedding, token mask)

    def to(self, device_or_dtype) -> "AnimaLLLiteControl":
        """Moved with the model: drop what was made for another device or dtype (remade on use)."""
        self._placed, self._placed_key, self._sizes = None, None, OrderedDict()
        return self

    def active(self, sigmas) -> bool:
        if sigmas is None or self.sigma_range is None:
            return True
        return self.sigma_range[1] <= float(sigmas.max()) <= self.sigma_range[0]

    def _network_on(self, device, dtype) -> AnimaLLLiteNetwork:
        key = (device, dtype, torch.is_inference_mode_enabled())
        if self._placed_key != key:
            self._placed, self._placed_key = copy_to(self.network, device, dtype), key
        return self._placed

    def _embedding(self, x: torch.Tensor, h: int, w: int):
        key = (x.device, x.dtype, h, w, torch.is_grad_enabled())
        cached = self._sizes.get(key)
        if cached is None:
            net = self._network_on(x.device, x.dtype)
            mask = None if self.mask is None else self.mask.to(x.device)
            image = conditioning_input(self.guide.to(x.device, torch.float32), mask if net.inpainting else None,
                                       h * GUIDE_STRIDE, w * GUIDE_STRIDE, net.in_channels,
                                       net.inpaint_masked_input, self.resize_mode)
            emb = net.encode(image.to(x.dtype))
            token_mask = None
            if mask is not None and not net.inpainting:
                token_mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False).flatten(1)[..., None].to(x.dtype)
            cached = self._sizes[key] = (emb, token_mask)
            while len(self._sizes) > _CACHED_SIZES:
                self._sizes.popitem(last=False)
        return cached

    def delta(self, x: torch.Tensor, block: int, target: str, grid: tuple) -> torch.Tensor | None:
        """What this LLLite adds to x ((B, N, D) or (B, 1, H, W, D)) at `target` of `block`, or
        None; grid: the (H, W) token grid of the call."""
        net = self._network_on(x.device, x.dtype)
        module = net.module(block, target)
        if module is None:
            return None
        flat = x.flatten(1, 3) if x.ndim == 5 else x
        if flat.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"Anima LLLite '{self.network.name}': {flat.shape[1]} tokens but a {grid[0]}x{grid[1]} "
                             "grid (only single images, one frame, are supported)")
        emb, token_mask = self._embedding(x, *grid)
        d = module.delta(flat, _batched(emb, flat.shape[0], self.network.name, "guide image")) * self.strength
        if token_mask is not None:
            d = d * _batched(token_mask, flat.shape[0], self.network.name, "mask")
        return d.view(x.shape)


def _batched(t: torch.Tensor, batch: int, name: str, what: str) -> torch.Tensor:
    """t's batch repeated to `batch` (one for all, or one per latent of every cond/uncond chunk)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"Anima LLLite '{name}': the {what} has a batch of {t.shape[0]}, the model batch is "
                         f"{batch}; give one {what} for all, or one per latent.")
    return t.repeat(batch // t.shape[0], 1, 1)


_GRID = "lllite_kit.anima_grid"  # where the input patch leaves the token grid for the block patches


def _summed(controls, x, block, target, options):
    out = x
    for c in controls:
        if c.active(options.get("sigmas")):
            d = c.delta(x, block, target, options["model_patch_data"][_GRID])
            if d is not None:
                out = out + d
    return out


class _Patch:
    def __init__(self, point: str, controls: tuple):
        self.point, self.controls = point, tuple(controls)

    def with_control(self, control):
        return type(self)(self.point, self.controls + (control,))

    def to(self, device_or_dtype):
        for c in self.controls:
            c.to(device_or_dtype)
        return self


class AnimaInputPatch(_Patch):
    """post_input: the embedded latent (B, T, H, W, D) tells the token grid; the attention
    inputs are flattened (B, T*H*W, D) and do not."""

    def __call__(self, args):
        args["transformer_options"]["model_patch_data"][_GRID] = tuple(args["img"].shape[2:4])
        return args


class AnimaAttentionPatch(_Patch):
    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        values = {"q": q, "k": k, "v": v}
        block = extra_options["block_index"]
        for slot, target in _ATTN_TARGETS[self.point].items():
            values[slot] = _summed(self.controls, values[slot], block, target, extra_options)
        return {**values, "pe": pe, "attn_mask": attn_mask}


class AnimaMLPPatch(_Patch):
    def __call__(self, args):
        options = args["transformer_options"]
        return {**args, "x": _summed(self.controls, args["x"], options["block_index"], "mlp_layer1", options)}


_POINTS = (("post_input", "input", AnimaInputPatch), ("attn1_patch", "attn1", AnimaAttentionPatch),
           ("attn2_patch", "attn2", AnimaAttentionPatch), ("mlp_patch", "mlp", AnimaMLPPatch))


def apply_anima_lllite(model, network: AnimaLLLiteNetwork, guide: torch.Tensor, strength: float = 1.0,
                       start_percent: float = 0.0, end_percent: float = 1.0, resize_mode: str = "crop",
                       mask: torch.Tensor | None = None):
    """A clone of `model` (an Anima ModelPatcher) with `network` acting from start_percent to
    end_percent of the schedule. guide: (G, C, H, W) in 0..1; mask (M, H, W) as AnimaLLLiteControl."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent} and {end_percent}")
    family = model_family(model)
    if family != "anima":
        raise ValueError(f"'{network.name}' is an Anima LLLite; the model is {family or 'another family'} "
                         f"({type(model.model.model_config).__name__}): use it with an Anima model")
    network.check_fits(model.model.diffusion_model, "Anima")
    patched = model.clone()
    if strength == 0:
        return patched
    sampling = patched.get_model_object("model_sampling")
    whole = start_percent == 0.0 and end_percent == 1.0
    sigma_range = None if whole else (float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))
    control = AnimaLLLiteControl(network, guide.detach(), strength, sigma_range, resize_mode,
                                 None if mask is None else mask.detach())
    patches = patched.model_options["transformer_options"].setdefault("patches", {})
    for point, attn, cls in _POINTS:
        current = patches.get(point, [])
        at = next((i for i, p in enumerate(current) if isinstance(p, cls)), None)
        if at is None:
            patches[point] = current + [cls(attn, (control,))]
        else:  # the clone owns this list; the patch object is shared with `model`, so replace it
            patches[point] = current[:at] + [current[at].with_control(control)] + current[at + 1:]
    return patched
