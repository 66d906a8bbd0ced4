"""The pose nodes through ComfyUI's validation and executor with tiny weight files: guide at
the input's size, one OpenPose JSON dict per image, and the missing-file errors (only for
the networks a switch turns on)."""
import numpy as np
import pytest
from PIL import Image

import tiny_pose
from graph_runner import GraphError
from lllite_kit.preprocessors import weights as w

H, W = 40, 56


@pytest.fixture(scope="module")
def pose_dir(comfy_dirs):
    d = comfy_dirs / "models" / "preprocessors"
    tiny_pose.write_openpose(d)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        comfy_dirs / "input" / "pose_in.png")
    return d


def _openpose(**inputs) -> dict:
    node = {"image": ["2", 0], "include_body": True, "include_hands": True, "include_face": True,
            "body_weights": "body_pose_model.pth", "hand_weights": "hand_pose_model.pth",
            "face_weights": "facenet.pth", "detect_resolution": 64, **inputs}
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "pose_in.png"}},
            "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}},
            "3": {"class_type": "LLLiteKit_OpenPose", "inputs": node},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def test_openpose_node_gives_a_guide_and_openpose_json_per_image(graph, pose_dir):
    graph.run(_openpose())
    guide, poses = graph.node_outputs("3")[0][0], graph.node_outputs("3")[1][0]
    assert guide.shape == (2, H, W, 3) and guide.min() >= 0 and guide.max() <= 1
    assert poses == [{"people": [], "canvas_height": H, "canvas_width": W}] * 2  # random weights: nobody


def test_openpose_missing_files_fail_before_running_only_when_used(graph, pose_dir):
    hand = pose_dir / "hand_pose_model.pth"
    aside = hand.with_suffix(".aside")
    hand.rename(aside)
    try:
        graph.run(_openpose(include_hands=False))  # the hand file is not needed
        with pytest.raises(GraphError) as e:
            graph.run(_openpose(include_hands=True))
    finally:
        aside.rename(hand)
    msg = str(e.value)
    assert msg.startswith("invalid graph") and "hand_pose_model.pth" in msg and w.OPENPOSE_HAND.url in msg
    assert str(pose_dir) in msg
