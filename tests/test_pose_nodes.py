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
    tiny_pose.write_dwpose(d)
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


def _dwpose(**inputs) -> dict:
    node = {"image": ["1", 0], "include_body": True, "include_hands": True, "include_face": True,
            "bbox_detector": "yolox_l.onnx", "pose_estimator": "dw-ll_ucoco_384.onnx", "backend": "torch",
            "detect_resolution": 64, **inputs}
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "pose_in.png"}},
            "3": {"class_type": "LLLiteKit_DWPose", "inputs": node},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def test_dwpose_node_draws_people_and_writes_pixel_json_on_torch_and_onnxruntime(graph, pose_dir):
    """The tiny detector is biased to find people, so figures are drawn; the JSON holds the
    OpenPose layout in input pixels (as comfyui_controlnet_aux's DWPose writes it); the
    onnxruntime backend gives the same guide."""
    graph.run(_dwpose())
    guide, (poses,) = graph.node_outputs("3")[0][0], graph.node_outputs("3")[1][0]
    assert guide.shape == (1, H, W, 3) and guide.max() > 0
    assert poses["canvas_height"] == H and poses["canvas_width"] == W and poses["people"]
    body = np.array(poses["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert len(poses["people"][0]["face_keypoints_2d"]) == 70 * 3 and body[:, 2].max() == 1.0
    assert np.abs(body[body[:, 2] > 0, :2]).max() > 1.5  # pixels, not fractions
    graph.run(_dwpose(backend="onnxruntime"))
    assert np.allclose(graph.node_outputs("3")[0][0], guide, atol=1 / 255)
