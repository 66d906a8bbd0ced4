"""MiDaS DPT-Hybrid depth through transformers' DPTForDepthEstimation, read from a local
folder (Intel/dpt-hybrid-midas: config.json + weights) with local_files_only. The hybrid
model only accepts its training size (384x384), so pictures are resized to that square
for detection and the depth map is resized back to the picture's own size."""
import os

import torch

from .depth import TransformersDepth, load_transformers_folder, normalise_per_image
from .image_ops import resize, to_rgb
from .models import load_cached, run_in_chunks
from .weights import MIDAS_DPT_HYBRID, WrongWeightLayout

ARCH = MIDAS_DPT_HYBRID.architecture


def build_midas(path: str) -> TransformersDepth:
    from transformers import DPTForDepthEstimation

    if not os.path.isdir(path):
        raise WrongWeightLayout(f"{os.path.basename(path)} is a file; {ARCH} is read from a transformers model folder")
    net, processor = load_transformers_folder(path, "dpt", DPTForDepthEstimation, ARCH)
    size = net.config.image_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return TransformersDepth(net, processor.get("image_mean", (0.5, 0.5, 0.5)), processor.get("image_std", (0.5, 0.5, 0.5)),
                             input_size=size)


def load_midas(path: str):
    return load_cached(path, build_midas)


def midas_depth(patcher, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) relative depth guide (near = 1) at the images' size."""
    def detect(net, chunk):
        height, width = chunk.shape[-2:]
        disparity = net(resize(to_rgb(chunk), *net.input_size))
        return resize(normalise_per_image(disparity), height, width)

    return run_in_chunks(patcher, images, detect)
