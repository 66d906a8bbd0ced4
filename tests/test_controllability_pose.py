"""Pose controllability: PCK of the guide's keypoints (OpenPose JSON) against those found in the
picture, with people matched one-to-one; and Measure Controllability's pose maps through
ComfyUI's executor with the tiny pose files."""
import numpy as np
import pytest
from PIL import Image

import tiny_pose
from graph_runner import GraphError
from lllite_kit.training.controllability.pose import pose_scores

H, W = 40, 56


def _person(points, width=1.0, height=1.0):
    """(18, 2) fractions -> an OpenPose JSON person (missing points: None), scaled to pixels."""
    flat = [v for p in points for v in ((p[0] * width, p[1] * height, 1.0) if p is not None else (0.0, 0.0, 0.0))]
    return {"pose_keypoints_2d": flat, "face_keypoints_2d": None, "hand_left_keypoints_2d": None,
            "hand_right_keypoints_2d": None}


def _pose(*people, pixels=False):
    w, h = (100, 200) if pixels else (1.0, 1.0)
    return {"people": [_person(p, w, h) for p in people], "canvas_height": 200, "canvas_width": 100}


def _figure(x0):
    """An asymmetric stick figure 0.3 wide (60 px box side: 0.3 of 200 px high) at x0."""
    rng = np.random.default_rng(int(x0 * 100))
    pts = np.stack([x0 + rng.uniform(0, 0.2, 18), rng.uniform(0.2, 0.5, 18)], 1)
    pts[0], pts[1] = (x0, 0.2), (x0 + 0.2, 0.5)
    return [tuple(p) for p in pts]


def test_pck_matches_people_and_normalises_by_the_person_box():
    a, b = _figure(0.1), _figure(0.6)
    guide = _pose(a, b)
    assert pose_scores(guide, guide, 200, 100)["pck"] == 1.0
    assert pose_scores(guide, _pose(b, a), 200, 100)["pck"] == 1.0  # order of people does not matter
    assert pose_scores(guide, _pose(a, b, pixels=True), 200, 100)["pck"] == 1.0  # DWPose's pixel JSON
    # box side: max(0.2 * 100, 0.3 * 200) = 60 px; PCK@0.1 = 6 px: 5 px moves pass, 7 px do not
    shifted = lambda p, dy: [(x, y + dy / 200) for x, y in p]  # noqa: E731
    assert pose_scores(guide, _pose(shifted(a, 5), shifted(b, 5)), 200, 100)["pck"] == 1.0
    assert pose_scores(guide, _pose(shifted(a, 7), b), 200, 100)["pck"] == pytest.approx(0.5)
    assert pose_scores(guide, _pose(shifted(a, 7), b), 200, 100, alpha=0.2)["pck"] == 1.0
    missing = pose_scores(guide, _pose(b), 200, 100)  # an unmatched guide person misses all its keypoints
    assert missing == {"pck": pytest.approx(0.5), "people_guide": 2.0, "people_found": 1.0}
    flipped = [(1 - x, y) for x, y in a]
    assert pose_scores(_pose(a), _pose(flipped), 200, 100)["pck"] < 0.2
    half = [p if i < 9 else None for i, p in enumerate(a)]  # the result shows half the keypoints
    assert pose_scores(_pose(a), _pose(half), 200, 100)["pck"] == pytest.approx(0.5)
    assert pose_scores(_pose(), _pose(), 200, 100)["pck"] == 1.0  # nobody asked, nobody found
    assert pose_scores(_pose(), _pose(a), 200, 100)["pck"] == 0.0


@pytest.fixture(scope="module")
def pose_pictures(comfy_dirs):
    tiny_pose.write_openpose(comfy_dirs / "models" / "preprocessors")
    tiny_pose.write_dwpose(comfy_dirs / "models" / "preprocessors")
    img = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(img).save(comfy_dirs / "input" / "pose_person.png")
    Image.fromarray(img[:, ::-1].copy()).save(comfy_dirs / "input" / "pose_person_flipped.png")


def _graph(map_name, weights, picture, keypoints=True, **extra):
    pose_node = {"openpose": {"class_type": "LLLiteKit_OpenPose", "inputs": {
                     "image": ["1", 0], "include_body": True, "include_hands": False, "include_face": False,
                     "body_weights": "body_pose_model.pth", "hand_weights": "hand_pose_model.pth",
                     "face_weights": "facenet.pth", "detect_resolution": 64}},
                 "dwpose": {"class_type": "LLLiteKit_DWPose", "inputs": {
                     "image": ["1", 0], "include_body": True, "include_hands": True, "include_face": True,
                     "bbox_detector": "yolox_l.onnx", "pose_estimator": "dw-ll_ucoco_384.onnx",
                     "backend": "torch", "detect_resolution": 64}}}[map_name]
    measure = {"images": ["2", 0], "guides": ["3", 0], "map": map_name, "weights": weights, "tolerance_px": 2.0,
               "edge_threshold": 0.5, "low_threshold": 100, "high_threshold": 200, "detect_resolution": 64,
               "safe": False, "normal_strength": 1.0, "normal_background": 0.1, **extra}
    if keypoints:
        measure["guide_keypoints"] = ["3", 1]
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "pose_person.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": picture}},
            "3": pose_node,
            "5": {"class_type": "LLLiteKit_MeasureControllability", "inputs": measure}}


def test_dwpose_pck_through_the_node(graph, pose_pictures):
    """The tiny DWPose finds people: the guide's own picture scores PCK 1, the mirrored picture
    (other keypoints from the same detector) scores lower; the side-by-side is guide | result | difference."""
    graph.run(_graph("dwpose", "dw-ll_ucoco_384.onnx", "pose_person.png"))
    score, report, side, maps = graph.node_outputs("5")
    guide = graph.node_outputs("3")[0][0]
    assert score[0] == 1.0 and report[0].startswith("dwpose (pck, higher is better)"), report[0]
    assert side[0].shape == (1, H, 3 * W, 3) and side[0][..., 2 * W:, :].max() == 0  # no difference
    assert np.allclose(side[0][..., :W, :], guide) and np.allclose(maps[0], guide)
    graph.run(_graph("dwpose", "dw-ll_ucoco_384.onnx", "pose_person_flipped.png", pck_alpha=0.1))
    score, report, side, _ = graph.node_outputs("5")
    assert score[0] < 0.9 and "people_guide" in report[0], report[0]
    assert side[0][..., 2 * W:, :].max() > 0
    print("dwpose, mirrored picture:", report[0].splitlines()[-1])


def test_openpose_through_the_node_and_the_missing_keypoints_error(graph, pose_pictures):
    graph.run(_graph("openpose", "body_pose_model.pth", "pose_person_flipped.png"))
    score, report, _, _ = graph.node_outputs("5")
    assert score[0] == 1.0 and "people_guide 0.0000, people_found 0.0000" in report[0]  # random body net: nobody
    with pytest.raises(GraphError, match="connect the POSE_KEYPOINT output"):
        graph.run(_graph("dwpose", "dw-ll_ucoco_384.onnx", "pose_person.png", keypoints=False))
