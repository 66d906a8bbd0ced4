"""The conditioning input of an Anima LLLite: the guide fitted to the picture (as the SDXL path
fits it) in [-1, 1], and for inpainting models the mask as a fourth channel, binarised at 0.5
and mapped to [-1, 1] as core's AnimaLLLitePatch and kohya's trainer build it."""
import torch

from ..guide import fit_guide


def conditioning_input(guide: torch.Tensor, mask: torch.Tensor | None, height: int, width: int,
                       in_channels: int, masked_input: bool = False, resize_mode: str = "crop") -> torch.Tensor:
    """guide (G, C, H, W) in 0..1; mask (M, 1, H', W') in 0..1 or None (= nothing to inpaint).
    -> (max(G, M), in_channels, height, width) in [-1, 1]. masked_input (files trained
    so say it in their metadata): the image is set to 0 (mid grey in [-1, 1]) under the mask."""
    image = fit_guide(guide, height, width, resize_mode) * 2 - 1
    if in_channels == 3:
        return image
    if mask is None:
        mask = torch.zeros(1, 1, height, width, device=image.device, dtype=image.dtype)
    else:
        mask = (fit_guide(mask.to(image), height, width, resize_mode)[:, :1] >= 0.5).to(image.dtype)
    batch = max(image.shape[0], mask.shape[0])
    for what, t in (("guide image", image), ("mask", mask)):
        if batch % t.shape[0]:
            raise ValueError(f"Anima LLLite inpainting: a {what} batch of {t.shape[0]} does not divide {batch}")
    image = image.repeat(batch // image.shape[0], 1, 1, 1)
    mask = mask.repeat(batch // mask.shape[0], 1, 1, 1)
    if masked_input:
        image = image * (mask < 0.5).to(image.dtype)
    return torch.cat((image, mask * 2 - 1), dim=1)
