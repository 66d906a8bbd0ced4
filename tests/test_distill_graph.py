"""The distillation node in a graph run by ComfyUI's executor: core's ControlNetLoader reads a
tiny SDXL ControlNet file, the node distils it into an LLLite from a folder dataset, and the
file loads in our Load ControlNet-LLLite node."""
import pytest
from safetensors import safe_open

import controlnet_testing
import workflow_fixtures
from lllite_kit.lllite.weights import read_lllite
from test_lllite_training_graph import TRAIN


@pytest.fixture(scope="module")
def prepared(comfy_dirs, tiny):
    workflow_fixtures.prepare_lllite_train_folders(comfy_dirs / "models", comfy_dirs / "input", tiny)
    controlnet_testing.write_controlnet(comfy_dirs / "models" / "controlnet" / "tiny_sdxl_cn.safetensors",
                                        tiny.build_model("sdxl", seed=0))
    return comfy_dirs


def _graph(**distill) -> dict:
    form = {k: v for k, v in TRAIN.items() if k not in ("network_dropout", "cache_latents_to_disk")}
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sdxl", "seed": 0}},
        "2": {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
            "train_dir": "training/lllite_canny/images", "reg_dir": "", "caption_extension": ".txt", "resolution": 64,
            "batch_size": 2, "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0,
            "caption_dropout_rate": 0.0, "conditioning_dir": "training/lllite_canny/canny"}},
        "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny_sdxl_cn.safetensors"}},
        "4": {"class_type": "LLLiteKit_DistillControlNetToLLLite", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], "control_net": ["3", 0],
            **form, "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0, "max_train_steps": 1,
            "save_every_n_steps": 0, "output_name": "distilled_sdxl", **distill}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
    }


def test_node_distils_a_core_controlnet_into_a_loadable_lllite(graph, prepared):
    graph.run(_graph())
    name = graph.node_outputs("4")[1][0]
    assert name == "distilled_sdxl.safetensors"
    path = prepared / "models" / "lllite" / name
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    assert meta["lllite_kit_teacher_strength"] == "0.8"
    assert read_lllite(str(path)).layout_name() == "SDXL with output blocks"  # the node's default
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "4"]
    assert any("distance to the teacher" in t and "bare model" in t for t in texts), texts
    from nodes import NODE_CLASS_MAPPINGS

    loaded = NODE_CLASS_MAPPINGS["LLLiteKit_LoadLLLite"].execute(name).result[0]  # the loader lists and reads it
    assert len(loaded.paths) == len(read_lllite(str(path)).paths) > 0
