"""Measure Controllability through ComfyUI's executor: the guide's own preprocessor on the
pictures, scores per image and their mean, the side-by-side picture, and the errors users see."""
import numpy as np
import pytest
from PIL import Image

import tiny_preprocessors as tp
from graph_runner import GraphError

H, W = 40, 48


@pytest.fixture(scope="module")
def picture(comfy_dirs):
    tp.write_depth_anything_original(comfy_dirs / "models" / "preprocessors" / "depth_anything_v2_vits.pth")
    img = np.zeros((H, W, 3), np.uint8)
    img[10:30, 12:36] = 230
    Image.fromarray(img).save(comfy_dirs / "input" / "square.png")
    Image.fromarray(np.zeros_like(img)).save(comfy_dirs / "input" / "blank.png")


def _measure(map_name, guide_node, weights="(none: Canny and standard lineart need no weights)", **extra):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "blank.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": guide_node,
        "5": {"class_type": "LLLiteKit_MeasureControllability", "inputs": {
            "images": ["3", 0], "guides": ["4", 0], "map": map_name, "weights": weights, "tolerance_px": 2.0,
            "edge_threshold": 0.5, "low_threshold": 100, "high_threshold": 200, "detect_resolution": 0,
            "safe": False, "normal_strength": 1.0, "normal_background": 0.1, **extra}},
    }


def test_canny_scores_per_image_and_side_by_side(graph, picture):
    guide = {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["1", 0], "low_threshold": 100,
                                                         "high_threshold": 200, "l2_gradient": False}}
    out = graph.run(_measure("canny", guide))
    score, report, side, maps = graph.node_outputs("5")
    assert score[0] == pytest.approx(0.5)  # the square itself: F1 1; the blank picture: 0
    assert "image 0: f1 1.0000" in report[0] and "image 1: f1 0.0000" in report[0]
    assert side[0].shape == (2, H, 3 * W, 3) and maps[0].shape == (2, H, W, 3)
    assert "mean: f1 0.5000" in out["5"]["text"][0]
    assert "chance" not in report[0]  # one guide for both pictures: no other guides to score against


def test_one_guide_per_picture_reports_the_chance_level(graph, picture):
    """Each picture's own Canny map as its guide: the square against the blank picture's guide and
    the blank picture against the square's score 0, the chance level."""
    guide = {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["3", 0], "low_threshold": 100,
                                                         "high_threshold": 200, "l2_gradient": False}}
    graph.run(_measure("canny", guide))
    _, report, _, _ = graph.node_outputs("5")
    assert "image 0: f1 1.0000" in report[0]
    assert "chance (each picture against the other pictures' guides): f1 0.0000" in report[0]


def test_depth_of_the_guide_picture_aligns_perfectly(graph, picture):
    guide = {"class_type": "LLLiteKit_DepthAnythingV2", "inputs": {"image": ["1", 0],
                                                                   "weights": "depth_anything_v2_vits.pth", "detect_resolution": 28}}
    graph.run(_measure("depth_anything_v2", guide, weights="depth_anything_v2_vits.pth", detect_resolution=28))
    _, report, _, _ = graph.node_outputs("5")
    first = report[0].splitlines()[1]
    assert first.startswith("image 0: rmse 0.0000, correlation 1.0000"), report[0]


def test_learned_map_without_weights_is_refused(graph, picture):
    guide = {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["1", 0], "low_threshold": 100,
                                                         "high_threshold": 200, "l2_gradient": False}}
    with pytest.raises(GraphError, match="choose its weight file"):
        graph.run(_measure("hed", guide))
    with pytest.raises(GraphError, match="not found"):
        graph.run(_measure("hed", guide, weights="ControlNetHED_absent.pth"))
