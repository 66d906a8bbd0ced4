"""Per-sample diffusion losses and their weights (sd-scripts' conditional_loss, huber_c
schedules, masked loss and min-SNR weighting). Inputs are plain tensors; `alphas_cumprod` comes from the
model's own noise schedule (comfy_bridge.NoiseSchedule)."""
import math

import torch
import torch.nn.functional as F


def huber_c(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, c: float, schedule: str) -> torch.Tensor:
    """The Huber transition point per sample: large at low noise ("snr"/"exponential"), so
    clean steps behave like l2 and noisy steps like l1."""
    t = timesteps.to(alphas_cumprod.device)
    if schedule == "constant":
        return torch.full(t.shape, c, dtype=torch.float32)
    if schedule == "exponential":
        alpha = -math.log(c) / len(alphas_cumprod)
        return torch.exp(-alpha * t.float())
    if schedule == "snr":
        a = alphas_cumprod[t].float()
        sigma = ((1.0 - a) / a) ** 0.5
        return (1 - c) / (1 + sigma) ** 2 + c
    raise ValueError(f"unknown huber_schedule {schedule!r} (snr, exponential, constant)")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    c: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of each sample, float32, shape (B,). mask: (B, 1, h, w) in [0, 1]; the
    per-pixel loss is multiplied by it, area-resized to the loss's size, before the mean over
    every element (sd-scripts' apply_masked_loss: masked-out pixels count as zeros, the
    mean is not renormalised by the mask's area)."""
    pred, target = pred.float(), target.float()
    if loss_type == "l2":
        elem = F.mse_loss(pred, target, reduction="none")
    elif loss_type == "l1":
        elem = F.l1_loss(pred, target, reduction="none")
    elif loss_type in ("huber", "smooth_l1"):
        c = c.to(pred.device).view(-1, *([1] * (pred.ndim - 1)))
        elem = 2 * (torch.sqrt((pred - target) ** 2 + c**2) - c)
        if loss_type == "huber":
            elem = elem * c
    else:
        raise ValueError(f"unknown loss_type {loss_type!r} (l2, l1, huber, smooth_l1)")
    if mask is not None:
        elem = elem * F.interpolate(mask.to(elem.device, elem.dtype), size=elem.shape[2:], mode="area")
    return elem.mean(dim=tuple(range(1, elem.ndim)))


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[timesteps.to(alphas_cumprod.device)].float()
    return a / (1.0 - a)


def min_snr_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma: min(SNR, gamma) / SNR for epsilon targets, min(SNR, gamma) / (SNR + 1)
    for v targets (whose loss already carries a factor SNR + 1)."""
    s = snr(timesteps, alphas_cumprod)
    clipped = torch.clamp(s, max=gamma)
    return clipped / (s + 1) if v_prediction else clipped / s
