"""OpenPose proven equal to controlnet_aux (the library comfyui_controlnet_aux is built on):
the three networks on the same random weights in the public file layouts, and the whole
detection (peaks, limb grouping, hand and face boxes and peaks, drawing) on the same
network outputs. Random weights find no people, so the detection comparison feeds both
implementations the same synthetic maps: two stick figures in heatmaps and part affinity
fields, and image-dependent hand and face maps."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lllite_kit.preprocessors.pose import draw, openpose, openpose_nets
from lllite_kit.preprocessors.pose.keypoints import pose_json
from lllite_kit.preprocessors import weights as w

ref_open_pose = pytest.importorskip("controlnet_aux.open_pose")
from controlnet_aux.open_pose import body as ref_body, face as ref_face, hand as ref_hand  # noqa: E402
from controlnet_aux.open_pose import model as ref_model  # noqa: E402


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # facenet zeroes its biases; give every parameter a value
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else (2.0 / p[0].numel()) ** 0.5))
    return net.eval()


def test_networks_equal_controlnet_aux_on_the_public_layouts(tmp_path):
    """Full-size random body and face networks saved as the public files are saved (body with
    the flat keys controlnet_aux's transfer() reads, facenet as its own state dict): both
    load them, and on one input both give the same PAFs and heatmaps (float32 convolutions
    in the same order: 1e-5 relative). The hand network is the face architecture with 22
    outputs: its public layout is checked key by key and shape by shape."""
    x = torch.rand(1, 3, 40, 32) - 0.5
    cases = [("body", ref_model.bodypose_model, ref_body.Body, w.OPENPOSE_BODY, True),
             ("face", ref_face.FaceNet, ref_face.Face, w.OPENPOSE_FACE, False)]
    for i, (name, make, loader, spec, nested) in enumerate(cases):
        with torch.device("meta"):  # skip the default initialisation: _randomise sets every value
            ref = make()
        sd = _randomise(ref.to_empty(device="cpu"), i).state_dict()
        path = tmp_path / spec.name
        torch.save({(k.split(".", 1)[1] if nested else k): v for k, v in sd.items()}, path)
        theirs = loader(str(path)).model
        ours = (openpose_nets.build_body if name == "body" else openpose_nets.build_cpm)(str(path), spec).eval()
        with torch.no_grad():
            a, b = theirs(x), ours(x)
        pairs = zip(a, b) if name == "body" else [(a[-1], b)]
        for t, o in pairs:
            assert t.shape == o.shape and t.abs().max() > 0
            assert torch.allclose(o, t, rtol=1e-5, atol=1e-5 * t.abs().max().item()), name
    with torch.device("meta"):
        hand = {k.split(".", 1)[1]: v.shape for k, v in ref_model.handpose_model().state_dict().items()}
        ours = {k: v.shape for k, v in openpose_nets.CPMNet(hand).state_dict().items()}
    assert ours == hand


# Two stick figures in map cells (x, y) of a 23 x 46 network output (image 256 x 512); the
# second has no wrists, so only the first gets hand boxes (the hand path runs 4 scales).
_FIGURE = [(6, 3), (6, 6), (3, 6), (2, 10), (2, 14), (9, 6), (10, 10), (10, 14), (4, 13), (4, 17), (4, 21),
           (8, 13), (8, 17), (8, 21), (5, 2), (7, 2), (4, 3), (8, 3)]


def _synthetic_body_maps(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    heat, paf = torch.zeros(1, 19, h, w), torch.zeros(1, 38, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for shift in (0, 22):
        pts = [(x + shift, y) if shift == 0 or part not in (4, 7) else None for part, (x, y) in enumerate(_FIGURE)]
        for part, (x, y) in ((i, p) for i, p in enumerate(pts) if p is not None):
            heat[0, part] = torch.maximum(heat[0, part], torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2))
        for (a, b), (cx, cy) in zip(openpose.dec.PAIRS, openpose.dec.PAF_CHANNELS):
            if pts[a - 1] is None or pts[b - 1] is None:
                continue
            (xa, ya), (xb, yb) = pts[a - 1], pts[b - 1]
            v = torch.tensor([xb - xa, yb - ya]).float()
            length = v.norm()
            u = v / length
            t = ((xs - xa) * u[0] + (ys - ya) * u[1]).clamp(0, length)
            near = ((xs - xa - t * u[0]) ** 2 + (ys - ya - t * u[1]) ** 2) <= 1.0
            paf[0, cx - 19][near], paf[0, cy - 19][near] = u[0], u[1]
    return paf, heat


class _FakeBody(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # the reference reads the device from a parameter

    def forward(self, x):
        paf, heat = _synthetic_body_maps(x.shape[2] // 8, x.shape[3] // 8)
        return paf.expand(x.shape[0], -1, -1, -1), heat.expand(x.shape[0], -1, -1, -1)


class _FakeCPM(nn.Module):
    """Image-dependent maps (blurred, mixed channels) so hand/face peaks come from the crops."""

    def __init__(self, outputs: int, as_list: bool):
        super().__init__()
        self.mix = nn.Conv2d(3, outputs, 1)
        _randomise(self.mix, outputs)
        self.as_list = as_list

    def forward(self, x):
        h = F.relu(self.mix(F.avg_pool2d(x, 8) * 4))
        return [h] if self.as_list else h


def _reference_detector():
    body = object.__new__(ref_body.Body)
    body.model = _FakeBody()
    hand = object.__new__(ref_hand.Hand)
    hand.model = _FakeCPM(22, as_list=False)
    face = object.__new__(ref_face.Face)
    face.model = _FakeCPM(71, as_list=True)
    return ref_open_pose.OpenposeDetector(body, hand, face)


def _as_points(keypoints):
    return None if keypoints is None else [None if k is None else (k.x, k.y) for k in keypoints]


def test_detection_and_drawing_equal_controlnet_aux():
    """Same network outputs -> the same people, keypoints, hands, faces (exactly: the same
    float operations) and the same drawn guide, pixel for pixel."""
    rng = np.random.default_rng(0)
    image = np.ascontiguousarray(rng.integers(0, 256, (256, 512, 3), dtype=np.uint8))
    ref = _reference_detector()
    theirs = ref.detect_poses(image.copy(), include_hand=True, include_face=True)
    nets = openpose.OpenPoseNets(_FakeBody(), ref.hand_estimation.model,
                                 _FakeCPM(71, as_list=False).requires_grad_(False))
    nets.face.load_state_dict(ref.face_estimation.model.state_dict())
    ours = openpose.detect_people(nets, image[None], hands=True, face=True)[0]
    assert len(theirs) == len(ours) == 2
    for t, o in zip(theirs, ours):
        assert _as_points(t.body.keypoints) == o.body
        assert _as_points(t.left_hand) == o.left_hand and _as_points(t.right_hand) == o.right_hand
        assert _as_points(t.face) == o.face and o.face
    assert sum(p is None for p in ours[0].body) + sum(p is None for p in ours[1].body) == 2
    assert sum(bool(p.left_hand) + bool(p.right_hand) for p in ours) == 2
    for flags in [(True, True, True), (True, False, False), (False, True, True)]:
        expected = ref_open_pose.draw_poses(theirs, 256, 512, *flags)
        drawn = draw.draw_people(ours, 256, 512, *flags)
        assert expected.any() and np.array_equal(drawn, expected), flags


def test_pose_json_has_the_openpose_layout():
    """comfyui_controlnet_aux's layout: people[] with x, y, confidence triples (missing body
    points 0, 0, 0; absent hands/face null), canvas size."""
    person = openpose.Person(body=[(0.5, 0.25)] + [None] * 17, left_hand=[(0.1, 0.2)] * 21)
    out = pose_json([person], 64, 96)
    assert out["canvas_height"] == 64 and out["canvas_width"] == 96
    p = out["people"][0]
    assert p["pose_keypoints_2d"][:6] == [0.5, 0.25, 1.0, 0.0, 0.0, 0.0] and len(p["pose_keypoints_2d"]) == 54
    assert len(p["hand_left_keypoints_2d"]) == 63 and p["hand_right_keypoints_2d"] is None and p["face_keypoints_2d"] is None
