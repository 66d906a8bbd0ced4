"""Applying LLLite networks to a ComfyUI model through its attn1/attn2 patches.

ComfyUI calls every attn1 patch as `n, context, value = p(n, context, value, extra_options)`
right before to_q(n), to_k(context), to_v(value) of a transformer block, and attn2 patches
likewise before attn2's to_q: exactly the inputs kohya's modules wrap. Each patched model
holds ONE attn1 and ONE attn2 LLLitePatch; applying another LLLite replaces them by patches
holding all controls, so every LLLite sees the block's original inputs and their deltas are
summed (parallel, as the A1111 port does), not fed through each other as kohya's node does.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..model_family import model_family
from .anima.module import AnimaLLLiteNetwork
from .anima.patch import apply_anima_lllite
from .guide import fit_guide
from .module import LAYOUTS, LLLiteNetwork, ModuleGroup

_TARGETS = {"attn1": ("attn1.to_q", "attn1.to_k", "attn1.to_v"), "attn2": ("attn2.to_q",)}
_CACHED_SIZES = 2  # guide sizes kept per control (e.g. a base pass and a hires pass)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same place when one has no index."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _grouped(x: torch.Tensor, per_group: torch.Tensor) -> torch.Tensor:
    """x (B, ...) * per_group (G, ...) where x's batch is B/G consecutive repeats of G items."""
    g = per_group.shape[0]
    return (x.view(x.shape[0] // g, g, *x.shape[1:]) * per_group).view(x.shape)


class _SizeCache:
    """Everything derived from the guide for one (device, dtype, picture size): the fitted guide,
    each module group's projected embedding on its token grid, the mask on each grid."""

    def __init__(self, guide: torch.Tensor):
        self.guide = guide  # (G, 3, H, W) in [-1, 1]
        self.projected = {}
        self.masks = {}


class LLLiteControl:
    """One applied LLLite: network, guide image, strength, sigma range and optional mask.

    The master network is never modified; a copy on the compute device and dtype, with the
    strength folded in, is made at first use and dropped by .to() when the model moves. The
    embedding of each module is computed once per guide size, device and dtype and reused
    across steps and runs.
    """

    def __init__(self, network: LLLiteNetwork, guide: torch.Tensor, strength: float,
                 sigma_range: tuple[float, float] | None = None, resize_mode: str = "crop",
                 mask: torch.Tensor | None = None, latent_scale: int = 8):
        """sigma_range: (sigma_start, sigma_end), the control acts while sigma_end <= sigma <=
        sigma_start; None for the whole schedule (no per-call check, no device sync)."""
        self.network = network
        self.guide = guide  # (G, C, H, W) in 0..1, as given
        self.strength = float(strength)
        self.sigma_range = None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]))
        self.resize_mode = resize_mode
        self.mask = None if mask is None else (mask if mask.ndim == 3 else mask[None]).float()[:, None]
        self.latent_scale = latent_scale
        self._placed = None  # copy of the network on the compute device and dtype
        self._placed_key = None  # (device, dtype, made in inference mode)
        self._groups = {}  # module keys -> ModuleGroup of the placed copy
        self._sizes = OrderedDict()  # (device, dtype, H, W) -> _SizeCache
        self._gate_sigmas = None
        self._gate_open = False

    # --- device and dtype ---------------------------------------------------------------
    def to(self, device_or_dtype) -> "LLLiteControl":
        """ComfyUI moves patches with the model (load: device, then model dtype; offload: the
        offload device). What no longer matches is dropped, freeing its memory; the next call
        places a copy on the input's device and dtype, which is what the U-Net computes in
        (also under manual casting, where the model dtype is only the storage dtype)."""
        if self._placed is None:
            return self
        device, dtype, _ = self._placed_key
        if isinstance(device_or_dtype, torch.dtype):
            stale = device_or_dtype.is_floating_point and device_or_dtype.itemsize >= 2 and device_or_dtype != dtype
        else:
            target = torch.device(device_or_dtype)
            stale = not _same_device(target, device)
            self._sizes = OrderedDict((k, v) for k, v in self._sizes.items() if _same_device(k[0], target))
        if stale:
            self._placed, self._placed_key, self._groups = None, None, {}
        return self

    def _network_on(self, device, dtype) -> LLLiteNetwork:
        # Tensors made in inference mode (ComfyUI runs graphs in it) cannot take part in autograd:
        # such a copy is replaced when the model runs with gradients (e.g. under a training node).
        key = self._placed_key
        if self._placed is None or key[:2] != (device, dtype) or (key[2] and torch.is_grad_enabled()):
            self._placed = self.network.copy_to(device, dtype, self.strength)
            self._placed_key = (device, dtype, torch.is_inference_mode_enabled())
            self._groups = {}
        return self._placed

    # --- per call -------------------------------------------------------------------------
    def active(self, sigmas: torch.Tensor | None) -> bool:
        """Whether the current sigma lies in [sigma_end, sigma_start]; evaluated once per U-Net
        call (every block sees the same sigmas tensor), so the host sync happens once."""
        if sigmas is None or self.sigma_range is None:
            return True
        if sigmas is not self._gate_sigmas:
            s = float(sigmas.reshape(-1)[0])
            self._gate_open = self.sigma_range[1] <= s <= self.sigma_range[0]
            self._gate_sigmas = sigmas
        return self._gate_open

    def _size_cache(self, device, dtype, height: int, width: int) -> _SizeCache:
        key = (device, dtype, height, width, torch.is_grad_enabled())  # see _network_on
        cache = self._sizes.get(key)
        if cache is None:
            guide = fit_guide(self.guide.to(device=device, dtype=torch.float32), height, width, self.resize_mode)
            cache = self._sizes[key] = _SizeCache((guide * 2 - 1).to(dtype))
            while len(self._sizes) > _CACHED_SIZES:
                self._sizes.popitem(last=False)
        return cache

    def _mask(self, cache: _SizeCache, h: int, w: int, dtype, device) -> torch.Tensor:
        mask = cache.masks.get((h, w))
        if mask is None:
            m = F.interpolate(self.mask.to(device), size=(h, w), mode="bilinear", align_corners=False)
            mask = cache.masks[(h, w)] = m.flatten(1)[..., None].to(dtype)
        return mask

    def _check_batch(self, what: str, given: int, batch: int, chunks: int) -> None:
        per_chunk = batch // max(chunks, 1)
        if given != 1 and (batch % max(chunks, 1) or given != per_chunk):
            raise ValueError(
                f"LLLite '{self.network.name}': the {what} has a batch of {given}, the latent batch is "
                f"{per_chunk}; give one {what} for all, or one per latent."
            )

    def deltas(self, keys: tuple, x: torch.Tensor, extra_options: dict) -> list[torch.Tensor]:
        """What modules `keys` (all reading x (B, T, C)) add at this block, strength and mask applied."""
        network = self._network_on(x.device, x.dtype)
        group = self._groups.get(keys)
        if group is None:
            group = self._groups[keys] = ModuleGroup([network.module(k) for k in keys])
        h, w = extra_options["activations_shape"][-2:]
        lh, lw = extra_options["original_shape"][-2:]
        if h * w != x.shape[1]:
            raise ValueError(f"LLLite '{self.network.name}': {x.shape[1]} tokens at {keys[0]} but a {h}x{w} grid")
        cache = self._size_cache(x.device, x.dtype, lh * self.latent_scale, lw * self.latent_scale)
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        self._check_batch("guide image", cache.guide.shape[0], x.shape[0], chunks)
        projected = cache.projected.get((keys, h, w))
        if projected is None:
            projected = cache.projected[(keys, h, w)] = group.project_guide(cache.guide, h, w)
        out = group.deltas(x, projected)
        if self.mask is None:
            return out
        mask = self._mask(cache, h, w, x.dtype, x.device)
        self._check_batch("mask", mask.shape[0], x.shape[0], chunks)
        return [_grouped(d, mask) for d in out]


class LLLitePatch:
    """The attn1 or attn2 patch of a model: sums the deltas of all its controls on the
    original inputs of the block's wrapped Linears."""

    def __init__(self, attn: str, controls: tuple):
        self.attn = attn
        self.controls = tuple(controls)

    def with_control(self, control: LLLiteControl) -> "LLLitePatch":
        return LLLitePatch(self.attn, self.controls + (control,))

    def to(self, device_or_dtype) -> "LLLitePatch":
        for c in self.controls:
            c.to(device_or_dtype)
        return self

    def __call__(self, n, context, value, extra_options):
        block = extra_options.get("block")
        if block is None:
            return n, context, value
        where = (block[0], block[1], extra_options.get("block_index", 0))
        inputs = [n, context, value]
        deltas = [None, None, None]
        for control in self.controls:
            keys = control.network.by_block.get(where)
            if not keys or not control.active(extra_options.get("sigmas")):
                continue
            by_input = {}  # modules whose Linears read the same tensor run as one group
            for slot, target in enumerate(_TARGETS[self.attn]):
                if target in keys:
                    by_input.setdefault(id(inputs[slot]), []).append((slot, keys[target]))
            for members in by_input.values():
                x = inputs[members[0][0]]
                for (slot, _), d in zip(members, control.deltas(tuple(k for _, k in members), x, extra_options)):
                    deltas[slot] = d if deltas[slot] is None else deltas[slot] + d
        out = [x if d is None else x + d for x, d in zip(inputs, deltas)]
        return out[0], out[1], out[2]


def model_label(model) -> str:
    """The model as error messages name it: 'SDXL (TinySDXL)', 'sd2 (SD20)'."""
    config = model.model.model_config
    family = model_family(config)
    shown = LAYOUTS[family].display if family in LAYOUTS else family or "unknown-family"
    return f"'{shown} ({type(config).__name__})'"


def apply_lllite(model, network: LLLiteNetwork, guide: torch.Tensor, strength: float = 1.0,
                 start_percent: float = 0.0, end_percent: float = 1.0, resize_mode: str = "crop",
                 mask: torch.Tensor | None = None):
    """A clone of `model` (ModelPatcher) with `network` acting from start_percent to end_percent
    of the schedule (converted to sigmas with the model's own sampling). guide: (G, C, H, W) in 0..1."""
    if isinstance(network, AnimaLLLiteNetwork):
        return apply_anima_lllite(model, network, guide, strength, start_percent, end_percent, resize_mode, mask)
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent} and {end_percent}")
    network.check_fits(model.model.diffusion_model, model_label(model))
    patched = model.clone()
    if strength == 0:
        return patched
    sampling = patched.get_model_object("model_sampling")
    whole = start_percent == 0.0 and end_percent == 1.0
    sigma_range = None if whole else (sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))
    control = LLLiteControl(
        network, guide.detach(), strength, sigma_range, resize_mode, None if mask is None else mask.detach(),
        patched.get_model_object("latent_format").spacial_downscale_ratio,
    )
    patches = patched.model_options["transformer_options"].setdefault("patches", {})
    for attn in ("attn1", "attn2"):
        if not any(t.startswith(attn) for keys in network.by_block.values() for t in keys):
            continue
        name = f"{attn}_patch"
        current = patches.get(name, [])
        at = next((i for i, p in enumerate(current) if isinstance(p, LLLitePatch)), None)
        if at is None:
            patches[name] = current + [LLLitePatch(attn, (control,))]
        else:  # the clone owns this list; the patch object itself is shared with `model`, so replace it
            patches[name] = current[:at] + [current[at].with_control(control)] + current[at + 1:]
    return patched
