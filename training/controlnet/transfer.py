"""lllyasviel's tool_transfer_control.py: a ControlNet trained on base A moved onto base B by
adding B - A to every tensor it copied from the U-Net (time_embed, label_emb, input_blocks,
middle_block); the hint encoder and zero convolutions stay as trained."""
import torch

from .network import ControlNetError


def transfer_control(control: dict[str, torch.Tensor], old_base: dict[str, torch.Tensor],
                     new_base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """control: cldm names (no prefix); old_base/new_base: the U-Nets' diffusion-model state
    dicts (core names). Returns the moved ControlNet, float32."""
    shared = sorted(k for k in control if k in old_base)
    if not shared:
        raise ControlNetError("the ControlNet shares no tensor with the old base model: it was not made from a U-Net of this kind")
    absent = [k for k in shared if k not in new_base]
    shapes = [k for k in shared if k not in absent and not (control[k].shape == old_base[k].shape == new_base[k].shape)]
    if absent or shapes:
        raise ControlNetError(f"the bases are of another family or layout than the ControlNet: {len(absent)} of its tensors are "
                              f"missing from the new base (e.g. {absent[:2]}), {len(shapes)} have other shapes (e.g. {shapes[:2]}). "
                              "Transfer works between models of one family (SD1.5 to SD1.5, SDXL to SDXL).")
    out = {k: v.float().clone() for k, v in control.items()}
    for k in shared:
        out[k] += new_base[k].float().to(out[k].device) - old_base[k].float().to(out[k].device)
    return out
