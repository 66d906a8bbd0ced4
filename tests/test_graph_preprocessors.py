"""Every preprocessor node through ComfyUI's validation and executor, reading tiny weight
files from the preprocessors model folder: output at the input's size, batches, models
kept loaded between runs, and the errors users see for missing or wrong files."""
import numpy as np
import pytest
import torch
from PIL import Image

import tiny_preprocessors as tp
from graph_runner import GraphError
from lllite_kit.preprocessors import models, weights as w

H, W = 37, 51  # odd on purpose
LEARNED = {
    "LLLiteKit_HED": {"weights": "ControlNetHED.pth", "safe": False, "scribble": True, "detect_resolution": 64},
    "LLLiteKit_PiDiNet": {"weights": "table5_pidinet.pth", "safe": True, "scribble": False, "detect_resolution": 64},
    "LLLiteKit_MLSD": {"weights": "mlsd_large_512_fp32.pth", "score_threshold": 0.1, "distance_threshold": 0.1,
                       "detect_resolution": 64},
    "LLLiteKit_LineartRealistic": {"weights": "sk_model.pth", "detect_resolution": 64},
    "LLLiteKit_DepthAnythingV2": {"weights": "depth_anything_v2_vits.pth", "detect_resolution": 56},
    "LLLiteKit_MiDaS": {"weights": "dpt-hybrid-midas"},
}
CLASSICAL = {
    "LLLiteKit_Canny": {"low_threshold": 100, "high_threshold": 200, "l2_gradient": False, "detect_resolution": 24},
    "LLLiteKit_LineartStandard": {"gaussian_sigma": 6.0, "intensity_threshold": 8},
    "LLLiteKit_ScribbleXDoG": {"threshold": 32, "detect_resolution": 0},
    "LLLiteKit_BinaryThreshold": {"threshold": 0},
    "LLLiteKit_Invert": {},
    "LLLiteKit_Tile": {"pyramid_levels": 2},
    "LLLiteKit_Blur": {"sigma": 2.0},
}


@pytest.fixture(scope="module")
def preprocessors_dir(comfy_dirs):
    d = comfy_dirs / "models" / "preprocessors"
    tp.write_all(d)
    tp.write_depth_anything_folder(d / "Depth-Anything-V2-Small-hf")
    rng = np.random.default_rng(0)
    img = np.zeros((H, W, 4), np.uint8)
    img[..., :3] = rng.integers(0, 60, (H, W, 3))
    img[8:28, 10:40, :3] = 220
    img[..., 3] = 255
    Image.fromarray(img, "RGBA").save(comfy_dirs / "input" / "odd_rgba.png")
    return d


def _graph(nodes: dict, batch: int = 1) -> dict:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "odd_rgba.png"}},
              "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": batch}}}
    for i, (class_type, inputs) in enumerate(nodes.items()):
        nid = str(10 + 2 * i)
        prompt[nid] = {"class_type": class_type, "inputs": {"image": ["2", 0], **inputs}}
        prompt[str(11 + 2 * i)] = {"class_type": "PreviewImage", "inputs": {"images": [nid, 0]}}
    return prompt


def _check(graph, prompt, batch):
    for nid, node in prompt.items():
        if node["class_type"].startswith("LLLiteKit_"):
            out = graph.node_outputs(nid)[0][0]
            assert out.shape == (batch, H, W, 3), node["class_type"]
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, node["class_type"]


def test_every_learned_node_reads_its_file_and_keeps_the_input_size(graph, preprocessors_dir):
    prompt = _graph(LEARNED, batch=2)
    graph.run(prompt)
    _check(graph, prompt, 2)


def test_classical_nodes_and_normals_from_depth(graph, preprocessors_dir):
    prompt = _graph(CLASSICAL)
    prompt["40"] = {"class_type": "LLLiteKit_DepthAnythingV2",
                    "inputs": {"image": ["2", 0], "weights": "Depth-Anything-V2-Small-hf", "detect_resolution": 28}}
    prompt["41"] = {"class_type": "LLLiteKit_NormalFromDepth",
                    "inputs": {"depth": ["40", 0], "strength": 2.0, "background_threshold": 0.1}}
    prompt["42"] = {"class_type": "PreviewImage", "inputs": {"images": ["41", 0]}}
    graph.run(prompt)
    _check(graph, prompt, 1)
    canny = graph.node_outputs("10")[0][0]
    assert set(canny.unique().tolist()) <= {0.0, 1.0} and canny.sum() > 0


def test_models_stay_loaded_between_runs(graph, preprocessors_dir):
    import folder_paths

    # the file the node reads: the first preprocessors folder that has it (a test file run earlier
    # in this process may have registered another folder before ours)
    path = w.locate("ControlNetHED.pth", folder_paths.get_folder_paths("preprocessors"))
    prompt = _graph({"LLLiteKit_HED": dict(LEARNED["LLLiteKit_HED"], scribble=False)})
    graph.run(prompt)
    loaded = models._loaded[(path, "")][1]
    prompt["10"]["inputs"]["safe"] = True  # a different graph, same weights
    graph.run(prompt)
    assert models._loaded[(path, "")][1] is loaded


def test_choices_offer_the_public_names_and_found_folders(graph, preprocessors_dir):
    from nodes import NODE_CLASS_MAPPINGS

    def choices(node_id):
        return NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]["weights"][1]["options"]

    assert choices("LLLiteKit_HED")[0] == "ControlNetHED.pth"
    # Public files this folder lacks are still offered, labelled with where they go.
    assert choices("LLLiteKit_LineartRealistic")[:2] == ["sk_model.pth", w.missing_label("sk_model2.pth")]
    depth = choices("LLLiteKit_DepthAnythingV2")
    assert depth[:4] == ["depth_anything_v2_vits.pth", w.missing_label("depth_anything_v2_vitb.pth"),
                         w.missing_label("depth_anything_v2_vitl.pth"), "Depth-Anything-V2-Small-hf"]
    assert NODE_CLASS_MAPPINGS["LLLiteKit_HED"].INPUT_TYPES()["optional"]["detect_resolution"][1]["default"] == 512


def _hed_choices():
    from nodes import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS["LLLiteKit_HED"].INPUT_TYPES()["required"]["weights"][1]["options"]


@pytest.mark.parametrize("choice", ["ControlNetHED.pth", "ControlNetHED.pth (missing: put it in models/preprocessors)"],
                         ids=["saved-name", "missing-label"])
def test_missing_file_is_labelled_and_fails_before_running(graph, preprocessors_dir, choice):
    path = preprocessors_dir / "ControlNetHED.pth"
    aside = path.with_suffix(".aside")
    path.rename(aside)
    try:
        choices = _hed_choices()
        with pytest.raises(GraphError) as e:
            graph.run(_graph({"LLLiteKit_HED": dict(LEARNED["LLLiteKit_HED"], weights=choice)}))
    finally:
        aside.rename(path)
    assert choices[0] == "ControlNetHED.pth (missing: put it in models/preprocessors)"
    assert "ControlNetHED.pth" not in choices
    assert _hed_choices()[0] == "ControlNetHED.pth"  # present again: the plain name
    msg = str(e.value)
    assert msg.startswith("invalid graph"), "an absent file must fail validation, before any node runs"
    assert "ControlNetHED.pth" in msg and str(preprocessors_dir) in msg and w.HED.url in msg


def test_the_pack_creates_its_model_folders_when_loaded(tmp_path, monkeypatch):
    import asyncio

    import folder_paths
    from lllite_kit.nodes.extension import comfy_entrypoint
    from lllite_kit.nodes.model_folders import PACK_FOLDERS

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.setattr(folder_paths, "folder_names_and_paths",
                        {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()})
    asyncio.run(asyncio.run(comfy_entrypoint()).on_load())
    for name, sub in PACK_FOLDERS.items():
        assert (tmp_path / "models" / sub).is_dir()
        assert str(tmp_path / "models" / sub) in folder_paths.get_folder_paths(name)
    assert {"lllite", "preprocessors"} <= set(PACK_FOLDERS)


def test_wrong_layout_error_names_the_architecture(graph, preprocessors_dir):
    wrong = tp.write_pidinet(preprocessors_dir / "sk_model2.pth")  # PiDiNet weights under the coarse lineart name
    try:
        with pytest.raises(GraphError, match="informative-drawings Generator"):
            graph.run(_graph({"LLLiteKit_LineartRealistic": {"weights": "sk_model2.pth", "detect_resolution": 64}}))
    finally:
        wrong.unlink()
