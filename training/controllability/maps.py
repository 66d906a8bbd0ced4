"""The kinds of guide the measurement knows: for each, the preprocessor of ours that made the
guide (run again, with the guide's settings, on the generated picture) and the metric family
that compares the two maps."""
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...preprocessors.canny import canny
from ...preprocessors.depth_anything import NATIVE_RESOLUTION, depth_anything, load_depth_anything
from ...preprocessors.hed import hed_edges, load_hed
from ...preprocessors.lineart_realistic import lineart_realistic, load_lineart
from ...preprocessors.lineart_standard import lineart_standard
from ...preprocessors.midas import load_midas, midas_depth
from ...preprocessors.normal_map import normals_from_depth
from ...preprocessors.pidinet import load_pidinet, pidinet_edges
from ...preprocessors.resolution import detect_then_restore
from ...preprocessors.segmentation import load_segmenter, segment


@dataclass
class MapSettings:
    """The guide's preprocessor settings; each kind reads the ones it has."""

    low_threshold: float = 100.0  # Canny, OpenCV 0-255 scale
    high_threshold: float = 200.0
    detect_resolution: int = 0  # 0: the kind's own default (the preprocessor node's)
    safe: bool = False  # HED / PiDiNet
    normal_strength: float = 1.0
    normal_background: float = 0.1
    weights_path: str | None = None  # learned detectors


@dataclass(frozen=True)
class MapKind:
    name: str
    family: str  # "edges", "depth", "normals", "segmentation": which metrics compare the maps
    make: Callable[[torch.Tensor, MapSettings], torch.Tensor]  # (B, C, H, W) 0..1 pictures -> maps
    needs_weights: bool = False


def _res(s: MapSettings, default: int) -> int:
    return s.detect_resolution or default


def _depth_anything(x, s):
    return depth_anything(load_depth_anything(s.weights_path), x, _res(s, NATIVE_RESOLUTION))


def _midas(x, s):
    return midas_depth(load_midas(s.weights_path), x, _res(s, 512))


def _normals(depth_fn):
    return lambda x, s: normals_from_depth(depth_fn(x, s), s.normal_strength, s.normal_background)


KINDS = {k.name: k for k in [
    MapKind("canny", "edges",
            lambda x, s: detect_then_restore(lambda i: canny(i, s.low_threshold, s.high_threshold), x,
                                             s.detect_resolution, binary=True)),
    MapKind("lineart_standard", "edges",
            lambda x, s: detect_then_restore(lambda i: lineart_standard(i), x, s.detect_resolution)),
    MapKind("hed", "edges", lambda x, s: hed_edges(load_hed(s.weights_path), x, _res(s, 512), s.safe), True),
    MapKind("pidinet", "edges", lambda x, s: pidinet_edges(load_pidinet(s.weights_path), x, _res(s, 512), s.safe), True),
    MapKind("lineart_realistic", "edges", lambda x, s: lineart_realistic(load_lineart(s.weights_path), x, _res(s, 512)), True),
    MapKind("depth_anything_v2", "depth", _depth_anything, True),
    MapKind("midas", "depth", _midas, True),
    MapKind("normals_depth_anything_v2", "normals", _normals(_depth_anything), True),
    MapKind("normals_midas", "normals", _normals(_midas), True),
    MapKind("segmentation_ade20k", "segmentation",
            lambda x, s: segment(load_segmenter(s.weights_path), x, _res(s, 512)), True),
]}


def result_maps(kind: str, pictures: torch.Tensor, settings: MapSettings) -> torch.Tensor:
    """The kind's map of each generated picture ((B, C, H, W) 0..1)."""
    k = KINDS[kind]
    if k.needs_weights and not settings.weights_path:
        raise ValueError(f"the '{kind}' map needs its detector's weight file")
    with torch.no_grad():
        return k.make(pictures.float(), settings)
