"""Conversions between ComfyUI tensors and the libraries' layouts, shared by the nodes."""
import torch


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in 0..1 -> (B, C, H, W) float32."""
    return image.movedim(-1, 1).float()


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> ComfyUI IMAGE (B, H, W, 3) on the intermediate device, grey expanded to RGB."""
    import comfy.model_management as mm

    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.movedim(1, -1).to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype()).contiguous()
