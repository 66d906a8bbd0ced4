"""Pose networks under ComfyUI's memory management: each file is built once (cached by
path and version, see ..models.load_cached) and all networks of a detector are put on the
load device together for a run."""
from typing import Callable

import torch

from ..models import load_cached


def load(path: str, build: Callable[[str], torch.nn.Module]):
    return load_cached(path, build)


def on_device(patchers: list) -> tuple[list[torch.nn.Module], torch.device]:
    import comfy.model_management as mm

    mm.load_models_gpu(patchers)
    return [p.model for p in patchers], patchers[0].load_device


def progress(total: int) -> Callable[[int], None]:
    """before_chunk callback: stops on ComfyUI's interrupt, advances the progress bar."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def step(done: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done)

    return step
