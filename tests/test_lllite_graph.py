"""The LLLite nodes in graphs run by ComfyUI's own executor."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from graph_runner import GraphError
from lllite_kit.lllite.weights import save_lllite
from lllite_testing import random_network


@pytest.fixture(scope="module")
def files(comfy_dirs, tiny):
    """An SDXL LLLite in core's controlnet folder, an SD1.5 one in ours, a LoRA and a .pth beside them."""
    models = comfy_dirs / "models"
    save_lllite(str(models / "controlnet" / "xl_canny_lllite.safetensors"), random_network(tiny.build_model("sdxl", 0), "sdxl", seed=1))
    save_lllite(str(models / "lllite" / "sd15_canny_lllite.safetensors"), random_network(tiny.build_model("sd15", 0), "sd15", seed=2))
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(64, 4)},
              str(models / "controlnet" / "a_lora.safetensors"))
    (models / "controlnet" / "old.pth").write_bytes(b"\x80\x02")
    y, x = np.mgrid[0:80, 0:80]
    Image.fromarray((((x - 40) ** 2 + (y - 40) ** 2 < 600) * 255).astype(np.uint8)).convert("RGB").save(comfy_dirs / "input" / "disc.png")


def _prompt(family="sdxl", lllite="xl_canny_lllite.safetensors", strength=1.0, apply=True, mask=False):
    model = ["5", 0] if apply else ["1", 0]
    prompt = {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "LLLiteKit_LoadLLLite", "inputs": {"lllite_name": lllite}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "disc.png"}},
        "4": {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["3", 0], "low_threshold": 100, "high_threshold": 200, "l2_gradient": False}},
        "5": {"class_type": "LLLiteKit_ApplyLLLite", "inputs": {"model": ["1", 0], "lllite": ["2", 0], "image": ["4", 0], "strength": strength,
              "start_percent": 0.0, "end_percent": 1.0, "resize_mode": "crop"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a disc"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 72, "height": 104, "batch_size": 2}},
        "9": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0],
              "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }
    if mask:
        prompt["11"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 72, "height": 104}}
        prompt["5"]["inputs"]["mask"] = ["11", 0]
    if not apply:
        del prompt["5"], prompt["2"]
    return prompt


def _latent(graph, prompt):
    graph.run(prompt)
    return graph.node_outputs("9")[0][0]["samples"]


def test_loader_lists_both_folders_and_skips_other_formats(files):
    from lllite_kit.nodes.lllite_nodes import LoadLLLite

    options = LoadLLLite.define_schema().inputs[0].options
    assert {"xl_canny_lllite.safetensors", "sd15_canny_lllite.safetensors"} <= set(options)
    assert "old.pth" not in options


def test_canny_lllite_graph_at_a_size_not_multiple_of_32(graph, files):
    """72x104 pixels, batch 2, CFG: the case where kohya's node fails with 'Sizes of tensors must match'."""
    controlled = _latent(graph, _prompt())
    assert controlled.shape == (2, 4, 13, 9) and torch.isfinite(controlled).all()
    bare = _latent(graph, _prompt(apply=False))
    assert (controlled - bare).abs().max() > 1e-3
    assert torch.equal(_latent(graph, _prompt(strength=0.0)), bare)
    assert torch.allclose(_latent(graph, _prompt(mask=True)), bare, atol=1e-6)  # an all-zero mask: no control
    sd15 = _latent(graph, _prompt("sd15", "sd15_canny_lllite.safetensors"))
    assert sd15.shape == (2, 4, 13, 9) and torch.isfinite(sd15).all()


def test_wrong_family_fails_before_sampling_naming_both(graph, files):
    with pytest.raises(GraphError, match=r"LLLite 'xl_canny_lllite.safetensors' \(136 modules.*SDXL layout\) does not fit the model 'SD1.5 \(TinySD15\)'"):
        graph.run(_prompt("sd15"))
    assert not [d for e, d in graph.server.messages if e == "executing" and d.get("node") == "9"]


def test_a_lora_in_the_loader_is_named(graph, files):
    with pytest.raises(GraphError, match="a_lora.safetensors is not a ControlNet-LLLite file: it looks like a LoRA"):
        graph.run(_prompt(lllite="a_lora.safetensors"))
