"""Extract a LoRA from two models (a fine-tune and its base), as sd-scripts'
networks/extract_lora_from_models.py: per targeted layer the difference tuned - base,
truncated to `dim` (3x3 convs to `conv_dim`, only when it is set) by SVD, clamped at
clamp_quantile, alpha = rank. The text encoders are kept only when some weight differs by
more than min_diff. method "lowrank" uses torch.svd_lowrank (oversampled, power-iterated,
see common.py); "exact" the full torch.linalg.svd.
"""
import torch

from ..targets import text_encoder_targets, unet_targets
from .common import LoRA, SVD_METHODS, factor, is_conv3x3, module, network_metadata, tool_metadata


def model_weights(diffusion_model: torch.nn.Module, text_encoders: dict | None, family: str, unet_config: dict,
                  conv: bool) -> dict[str, torch.Tensor]:
    """kohya module name -> weight of every layer sd-scripts' LoRA targets (conv: C3Lier's
    res blocks and samplers too); text_encoders as targets.text_encoder_targets takes them."""
    targets = unet_targets(diffusion_model, family, unet_config, with_conv_blocks=conv)
    if text_encoders:
        targets += text_encoder_targets(text_encoders, family)
    return {t.name: t.module.weight.detach() for t in targets}


def extract(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], dim: int = 4, conv_dim: int | None = None,
            clamp_quantile: float | None = 0.99, min_diff: float = 0.01, method: str = "lowrank",
            family: str | None = None, name: str = "extracted", sources=("", "")) -> tuple[LoRA, dict[str, float]]:
    """(LoRA, module name -> relative Frobenius error ||diff - up @ down * alpha/rank|| / ||diff||)."""
    if method not in SVD_METHODS:
        raise ValueError(f"extract: method must be one of {SVD_METHODS}, got {method!r}")
    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise ValueError("extract: dim and conv_dim must be at least 1")
    if set(base) != set(tuned):
        raise ValueError(f"extract: the models have different layers: {sorted(set(base) ^ set(tuned))[:5]}")
    diffs = {}
    for n in base:
        if base[n].shape != tuned[n].shape:
            raise ValueError(f"extract: {n} has shape {tuple(base[n].shape)} in the base and {tuple(tuned[n].shape)} in the tuned model")
        if is_conv3x3(base[n]) and conv_dim is None:
            continue
        diffs[n] = tuned[n].float() - base[n].float()
    te = [n for n in diffs if n.startswith("lora_te")]
    te_differs = any(float(diffs[n].abs().max()) > min_diff for n in te)
    if not te_differs:
        for n in te:
            del diffs[n]
    if not diffs:
        raise ValueError("extract: no layer to extract")
    modules, errors = {}, {}
    for n, diff in diffs.items():
        r = min(conv_dim if is_conv3x3(diff) else dim, diff.shape[0], diff.shape[1])
        up, down = factor(diff, r, method, clamp_quantile)
        modules[n] = module(up, down, r)
        approx = up.reshape(up.shape[0], -1) @ down.reshape(r, -1)
        norm = float(diff.norm())
        errors[n] = float((diff.reshape(diff.shape[0], -1) - approx).norm()) / norm if norm > 0 else 0.0
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_dim))} if conv_dim is not None else {}
    meta = network_metadata([], dim, float(dim), args, family=family)
    meta["modelspec.title"] = name
    if sources[0]:
        meta["ss_sd_model_name"] = sources[0]  # the model the LoRA applies to, as sd-scripts names it
    meta.update(tool_metadata(
        "extract", f"extracted from {sources[1] or 'tuned'} - {sources[0] or 'base'}, dim {dim}, conv_dim {conv_dim}",
        base=sources[0], tuned=sources[1], dim=dim, conv_dim=conv_dim, clamp_quantile=clamp_quantile, min_diff=min_diff,
        svd=method, text_encoder=te_differs and bool(te)))
    return LoRA(name, modules, meta), errors
