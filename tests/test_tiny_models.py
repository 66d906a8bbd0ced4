"""The tiny models behave like the real families: real module names, deterministic, sample in a graph."""
import torch


def test_sdxl_module_names_are_the_real_ones(tiny):
    model = tiny.build_model("sdxl", seed=0)
    names = dict(model.model.diffusion_model.named_modules())
    for n in ("input_blocks.4.1.transformer_blocks.0.attn1.to_q",
              "input_blocks.8.1.transformer_blocks.9.attn2.to_q",
              "middle_block.1.transformer_blocks.9.attn1.to_v",
              "output_blocks.0.1.transformer_blocks.9.attn2.to_k"):
        assert n in names
    attn_q = [n for n in names if n.endswith("attn1.to_q") and not n.startswith("output")]
    assert len(attn_q) == 2 * 2 + 10 * 2 + 10  # the 34 blocks kohya's LLLite hooks (x4 = 136 modules)
    assert names["input_blocks.4.1.transformer_blocks.0.attn2.to_k"].in_features == tiny.SDXL_CONTEXT_DIM


def test_sd15_module_names_are_the_real_ones(tiny):
    names = dict(tiny.build_model("sd15", seed=0).model.diffusion_model.named_modules())
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q" in names
    assert "middle_block.1.transformer_blocks.0.attn2.to_k" in names
    assert "input_blocks.7.1.transformer_blocks.0.attn1.to_q" in names
    assert "input_blocks.10.1.transformer_blocks.0.attn1.to_q" not in names  # lowest level has no attention


def test_same_seed_same_weights(tiny):
    a = tiny.build_model("sdxl", seed=3).model.diffusion_model.state_dict()
    b = tiny.build_model("sdxl", seed=3).model.diffusion_model.state_dict()
    c = tiny.build_model("sdxl", seed=4).model.diffusion_model.state_dict()
    k = "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k])


def test_txt2img_graph_on_tiny_sdxl_is_deterministic(graph):
    prompt = {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sdxl", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0], "seed": 1, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    graph.run(prompt)
    latent = graph.node_outputs("5")[0][0]["samples"]
    image = graph.node_outputs("6")[0][0]
    assert latent.shape == (2, 4, 12, 8) and torch.isfinite(latent).all()
    assert image.shape == (2, 96, 64, 3)
    prompt["5"]["inputs"]["seed"] = 2
    graph.run(prompt)
    other = graph.node_outputs("5")[0][0]["samples"]
    assert not torch.allclose(latent, other)
    prompt["5"]["inputs"]["seed"] = 1
    graph.run(prompt)
    assert torch.equal(graph.node_outputs("5")[0][0]["samples"], latent)
