"""The three OpenPose networks of lllyasviel/Annotators (body_pose_model.pth,
hand_pose_model.pth, facenet.pth): VGG-19 front end and CPM stages of named convolutions.

The public files hold flat keys ("conv1_1.weight", "Mconv3_stage4_L2.bias", ...), so each
convolution is an attribute of that name and the files load as they are. Kernel sizes and
widths are read from the file, so any width of the same architecture loads."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import WeightSpec, load_exact, read_state_dict, require_keys

# Front end shared by the three networks (a 2x max-pool follows the marked convolutions).
_VGG = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1", "conv4_2"]
_POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4"}
BODY_FRONT = _VGG + ["conv4_3_CPM", "conv4_4_CPM"]
CPM_FRONT = _VGG + ["conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"]
STAGES = range(2, 7)


def body_branch(stage: int, limb: int) -> list[str]:
    """Convolutions of one body branch (L1 = part affinity fields, L2 = heatmaps)."""
    if stage == 1:
        return [f"conv5_{i}_CPM_L{limb}" for i in range(1, 6)]
    return [f"Mconv{i}_stage{stage}_L{limb}" for i in range(1, 8)]


def cpm_stage(stage: int) -> list[str]:
    """Convolutions of one hand/face stage."""
    if stage == 1:
        return ["conv6_1_CPM", "conv6_2_CPM"]
    return [f"Mconv{i}_stage{stage}" for i in range(1, 8)]


def body_layers() -> list[str]:
    return BODY_FRONT + [n for s in [1, *STAGES] for limb in (1, 2) for n in body_branch(s, limb)]


def cpm_layers() -> list[str]:
    return CPM_FRONT + [n for s in [1, *STAGES] for n in cpm_stage(s)]


class _Convs(nn.Module):
    """Named convolutions with the shapes of a state dict ('same' padding, stride 1)."""

    def __init__(self, names: list[str], shapes: dict[str, torch.Size]):
        super().__init__()
        for name in names:
            out_c, in_c, k, _ = shapes[name + ".weight"]
            setattr(self, name, nn.Conv2d(in_c, out_c, k, padding=k // 2))

    def chain(self, names: list[str], x: torch.Tensor, last_relu: bool = False) -> torch.Tensor:
        for i, name in enumerate(names):
            x = getattr(self, name)(x)
            if i < len(names) - 1 or last_relu:
                x = F.relu(x)
            if name in _POOL_AFTER:
                x = F.max_pool2d(x, 2, 2)
        return x


class BodyPoseNet(_Convs):
    """18 heatmaps + background (L2) and 19 part affinity fields (38 channels, L1)."""

    def __init__(self, shapes):
        super().__init__(body_layers(), shapes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: BGR / 256 - 0.5, (B, 3, H, W) -> (pafs, heatmaps) at 1/8 size."""
        feat = self.chain(BODY_FRONT, x, last_relu=True)
        h = feat
        for s in [1, *STAGES]:
            paf = self.chain(body_branch(s, 1), h)
            # The reference lists Mconv7_stage6_L1 twice among its no-ReLU layers and never
            # Mconv7_stage6_L2: its final heatmaps pass through a ReLU, and so do ours.
            heat = self.chain(body_branch(s, 2), h, last_relu=s == 6)
            h = torch.cat([paf, heat, feat], 1)
        return paf, heat


class CPMNet(_Convs):
    """Hand (22 maps) and face (71 maps) networks: one architecture, different outputs."""

    def __init__(self, shapes):
        super().__init__(cpm_layers(), shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BGR / 256 - 0.5 -> the last stage's heatmaps at 1/8 size."""
        feat = self.chain(CPM_FRONT, x, last_relu=True)
        h = self.chain(cpm_stage(1), feat)
        for s in STAGES:
            h = self.chain(cpm_stage(s), torch.cat([h, feat], 1))
        return h


def _build(cls, names: list[str], spec: WeightSpec, path: str) -> nn.Module:
    sd = read_state_dict(path, spec.architecture)
    require_keys(sd, [n + ".weight" for n in names], spec.architecture, path)
    shapes = {k: v.shape for k, v in sd.items()}
    return load_exact(cls(shapes), sd, spec.architecture, path)


def build_body(path: str, spec: WeightSpec) -> BodyPoseNet:
    return _build(BodyPoseNet, body_layers(), spec, path)


def build_cpm(path: str, spec: WeightSpec) -> CPMNet:
    return _build(CPMNet, cpm_layers(), spec, path)
