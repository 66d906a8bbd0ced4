"""The LLLite training node in graphs run by ComfyUI's own executor: data errors reach the user,
SD1.5 trains and its file loads in the apply node (and predicts what training predicted),
resume continues exactly, and the synthetic loop (generate -> Canny -> train -> apply) runs."""
import json
import re

import pytest
import torch
from safetensors import safe_open

import workflow_fixtures
from graph_runner import GraphError
from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite
from lllite_kit.training.comfy_bridge import trainable_model
from lllite_kit.training.data.batch import Batch
from lllite_kit.training.lllite_adapter import LLLiteAdapter
from paths import REPO

TRAIN = {
    "output_name": "t_lllite", "max_train_steps": 2, "learning_rate": 1e-3, "cond_emb_dim": 8, "network_dim": 16,
    "network_dropout": 0.1, "optimizer_type": "AdamW", "optimizer_args": "", "lr_scheduler": "constant", "lr_warmup_steps": 0,
    "mixed_precision": "no", "gradient_checkpointing": True, "gradient_accumulation_steps": 1, "seed": 1,
    "noise_offset": 0.05, "min_snr_gamma": 5.0, "loss_type": "l2", "cache_latents": True, "cache_latents_to_disk": False,
    "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 1, "save_precision": "float",
    "sample_prompts": "", "sample_every_n_steps": 0, "sample_sampler": "euler", "if_exists": "overwrite", "extra_options": "",
}


def _folder_graph(family: str, conditioning_dir: str, **train) -> dict:
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
            "train_dir": "training/lllite_canny/images", "reg_dir": "", "caption_extension": ".txt", "resolution": 64,
            "batch_size": 2, "enable_bucket": False, "flip_aug": True, "shuffle_caption": False, "keep_tokens": 0,
            "caption_dropout_rate": 0.0, "conditioning_dir": conditioning_dir}},
        "3": {"class_type": "LLLiteKit_TrainLLLite", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], **TRAIN, **train}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }


@pytest.fixture(scope="module")
def folders(comfy_dirs, tiny):
    """The folder dataset of the example workflow: 4 pictures with guides under the same names."""
    workflow_fixtures.prepare_lllite_train_folders(comfy_dirs / "models", comfy_dirs / "input", tiny)
    return comfy_dirs / "input" / "training" / "lllite_canny"


def test_missing_and_extra_guide_images_are_listed_by_the_node(graph, folders):
    bad = folders / "bad_canny" / "1_photos"
    bad.mkdir(parents=True, exist_ok=True)
    for name in ("room_0.png", "room_1.png", "stray.png"):
        (bad / name).write_bytes((folders / "canny" / "1_photos" / "room_0.png").read_bytes())
    with pytest.raises(GraphError) as err:
        graph.run(_folder_graph("sdxl", "training/lllite_canny/bad_canny"))
    message = str(err.value)
    assert "3 dataset problems in 2 groups: Images without a guide image (2); Guide images without an image (1)." in message
    missing, extra = message.split("\nImages without a guide image (2): ")[1].split("\nGuide images without an image (1): ")
    assert re.findall(r"\n  - (.*)", missing) == ["images/1_photos/room_2.png", "images/1_photos/room_3.png"]
    assert re.findall(r"\n  - (.*)", extra) == ["bad_canny/1_photos/stray.png"]


def test_training_without_guide_images_is_refused_by_name(graph, folders):
    with pytest.raises(GraphError, match="needs guide images"):
        graph.run(_folder_graph("sdxl", ""))


def test_sd15_trains_loads_in_the_apply_node_and_predicts_like_training(graph, folders, comfy_dirs, tiny):
    graph.run(_folder_graph("sd15", "training/lllite_canny/canny", output_name="sd15_lllite"))
    path = comfy_dirs / "models" / "lllite" / "sd15_lllite.safetensors"
    assert graph.node_outputs("3")[1] == ["sd15_lllite.safetensors"]
    assert (comfy_dirs / "models" / "lllite" / "sd15_lllite-step00000001.safetensors").is_file()
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v1/control-net-lllite"
    network = read_lllite(str(path))
    assert len(network.paths) == 28 and network.layout_name() == "SD1.5"
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "3"]
    assert any("control gap" in t and "held-out loss" in t for t in texts), texts

    apply = {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "2": {"class_type": "LLLiteKit_LoadLLLite", "inputs": {"lllite_name": "sd15_lllite.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "training/lllite_canny/canny/1_photos/room_1.png"}},
        "5": {"class_type": "LLLiteKit_ApplyLLLite", "inputs": {"model": ["1", 0], "lllite": ["2", 0], "image": ["3", 0],
              "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "resize_mode": "crop"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a living room"}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["8", 0],
              "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }
    assert graph.run(apply)["12"]["images"]

    # the file through the apply patch = the training-time hooks, incl. the middle block's 2x2 average
    model = tiny.build_model("sd15", seed=0)
    g = torch.Generator().manual_seed(0)
    guides = torch.rand(2, 3, 64, 64, generator=g)
    x, t, context = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 800]), torch.randn(2, 77, tiny.SD15_CONTEXT_DIM, generator=g)
    with torch.inference_mode(False), trainable_model(model) as tm, torch.no_grad():
        adapter = LLLiteAdapter("sd15", network_weights=str(path))
        adapter.attach(tm.diffusion_model, {})
        adapter.train(False)
        adapter.set_batch(Batch(x, ["a"] * 2, [(64, 64)] * 2, [(0, 0)] * 2, [(64, 64)] * 2, guides * 2 - 1))
        training = tm.predict(x, t, context, None)
        adapter.detach()
        patched = apply_lllite(tm.patcher, network, guides)
        applied = tm.predict(x, t, context, None, transformer_options=patched.model_options["transformer_options"])
        bare = tm.predict(x, t, context, None)
    assert (training - bare).abs().max() > 1e-4
    assert torch.allclose(applied, training, rtol=1e-4, atol=1e-5 * training.abs().max().item())


def test_resume_continues_as_the_uninterrupted_run(graph, folders, comfy_dirs):
    lllite_dir = comfy_dirs / "models" / "lllite"
    graph.run(_folder_graph("sd15", "training/lllite_canny/canny", output_name="whole", heldout_images=0))
    graph.run(_folder_graph("sd15", "training/lllite_canny/canny", output_name="half", heldout_images=0, max_train_steps=1))
    graph.run(_folder_graph("sd15", "training/lllite_canny/canny", output_name="half", heldout_images=0, if_exists="resume"))
    whole, half = read_lllite(str(lllite_dir / "whole.safetensors")), read_lllite(str(lllite_dir / "half.safetensors"))
    assert all(torch.equal(v, half.state_dict()[k]) for k, v in whole.state_dict().items())


def test_synthetic_loop_workflow_generates_trains_and_applies(graph, comfy_dirs, tiny):
    """example_workflows/api/lllite_synthetic_loop.json on the tiny SDXL model: KSampler makes
    the images, Canny the guides, the node trains on the in-graph lists, the result is applied."""
    prompt = json.loads((REPO / "example_workflows" / "api" / "lllite_synthetic_loop.json").read_text())
    prompt["1"] = {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sdxl", "seed": 0}}
    for node in prompt.values():
        node["inputs"].pop("ckpt_name", None)
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    overrides = workflow_fixtures.prepare_lllite_synthetic_loop(comfy_dirs / "models", comfy_dirs / "input", tiny)
    for node_id, values in overrides.items():
        prompt[node_id]["inputs"].update(values)
    prompt["11"]["inputs"]["if_exists"] = "overwrite"  # the example-workflow test may have trained this name already
    outputs = graph.run(prompt)
    assert outputs["16"]["images"]
    assert (comfy_dirs / "models" / "lllite" / "synthetic_canny_lllite.safetensors").is_file()
    network, name, curve, samples, saved = graph.node_outputs("11")
    assert name == ["synthetic_canny_lllite.safetensors"] and network[0].layout_name() == "SDXL"
    assert curve[0].shape == (1, 500, 640, 3)  # loss panel + control-gap panel
    assert samples[0].shape == (1, 64, 64, 3)
    assert "synthetic_canny_lllite.safetensors" in saved[0].splitlines()
