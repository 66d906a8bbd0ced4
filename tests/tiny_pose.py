"""Tiny random-weight pose files in the public layouts (no downloads here): the OpenPose
networks with flat keys as in body_pose_model.pth / hand_pose_model.pth / facenet.pth, at
a small width; DWPose ONNX graphs are built in test_pose_dwpose.py."""
from pathlib import Path

import torch

from lllite_kit.preprocessors.pose import openpose_nets as nets


def _conv(shapes: dict, name: str, c_in: int, c_out: int, k: int) -> int:
    shapes[name] = (c_out, c_in, k, k)
    return c_out


def _front(shapes: dict, names: list[str], width: int) -> int:
    c = 3
    for name in names:
        c = _conv(shapes, name, c, width, 3)
    return c


def body_shapes(width: int = 4) -> dict:
    shapes = {}
    feat = _front(shapes, nets.BODY_FRONT, width)
    for stage in [1, *nets.STAGES]:
        for limb, out in ((1, 38), (2, 19)):
            names = nets.body_branch(stage, limb)
            c = feat if stage == 1 else 38 + 19 + feat
            kernels = [3, 3, 3, 1, 1] if stage == 1 else [7, 7, 7, 7, 7, 1, 1]
            for i, (name, k) in enumerate(zip(names, kernels)):
                c = _conv(shapes, name, c, out if i == len(names) - 1 else width, k)
    return shapes


def cpm_shapes(outputs: int, width: int = 4) -> dict:
    shapes = {}
    feat = _front(shapes, nets.CPM_FRONT, width)
    c = _conv(shapes, "conv6_1_CPM", feat, width, 1)
    _conv(shapes, "conv6_2_CPM", c, outputs, 1)
    for stage in nets.STAGES:
        c = outputs + feat
        for i, (name, k) in enumerate(zip(nets.cpm_stage(stage), [7, 7, 7, 7, 7, 1, 1])):
            c = _conv(shapes, name, c, outputs if i == 6 else width, k)
    return shapes


def _write(path: Path, shapes: dict, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (o, i, k, _) in shapes.items():
        sd[name + ".weight"] = torch.randn(o, i, k, k, generator=g) * (2.0 / (i * k * k)) ** 0.5
        sd[name + ".bias"] = torch.randn(o, generator=g) * 0.1
    torch.save(sd, path)
    return path


def write_openpose(folder: Path, seed: int = 0, width: int = 4) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"body": _write(folder / "body_pose_model.pth", body_shapes(width), seed),
            "hand": _write(folder / "hand_pose_model.pth", cpm_shapes(22, width), seed + 1),
            "face": _write(folder / "facenet.pth", cpm_shapes(71, width), seed + 2)}
