"""Shared by the depth estimators: transformers depth models behind one interface (RGB
0..1 in, relative disparity out), and the per-image scaling that turns disparity into a
guide with near things white and far things black."""
import json
import os

import torch
import torch.nn as nn

from .weights import WrongWeightLayout

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TransformersDepth(nn.Module):
    """Wraps a *ForDepthEstimation model (whose read-only `device` property ModelPatcher
    could not set) and applies its input normalisation."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return self.net(pixel_values=(rgb - mean) / std).predicted_depth.unsqueeze(1)


def load_transformers_folder(path: str, model_type: str, model_class, architecture: str) -> tuple[nn.Module, dict]:
    """A save_pretrained folder, read from disk only; returns the model and its image
    processor settings (empty when the folder has none)."""
    config_file = os.path.join(path, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            found = json.load(f).get("model_type")
    except (OSError, ValueError) as e:
        raise WrongWeightLayout(f"{path} has no readable config.json; expected {architecture}") from e
    if found != model_type:
        raise WrongWeightLayout(f"{os.path.basename(path)} holds a '{found}' model; expected {architecture}")
    net = model_class.from_pretrained(path, local_files_only=True)
    processor_file = os.path.join(path, "preprocessor_config.json")
    processor = {}
    if os.path.isfile(processor_file):
        with open(processor_file, encoding="utf-8") as f:
            processor = json.load(f)
    return net, processor


def normalise_per_image(disparity: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> same shape, min..max of each image mapped to 0..1 (flat -> 0)."""
    flat = disparity.flatten(1)
    lo = flat.amin(dim=1).view(-1, 1, 1, 1)
    hi = flat.amax(dim=1).view(-1, 1, 1, 1)
    return ((disparity - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
