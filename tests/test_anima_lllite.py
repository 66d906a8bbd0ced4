"""Anima LLLite v2 through our LoadLLLite/ApplyLLLite path against core's ModelPatchLoader +
AnimaLLLiteApply on the same file, tiny Anima model (comfy/ldm/anima, real module names) and inputs."""
import pytest
import torch

from anima_testing import dit, random_anima_lllite, sample
from lllite_kit.lllite.anima.module import AnimaLLLiteNetwork
from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite

TOL = 1e-5  # relative to the output's largest value: float32 reordering only


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model():
    import tiny_anima

    return tiny_anima.build_anima(seed=0)


@pytest.fixture(scope="module")
def patch_dir(comfy_dirs, model):
    """core's model_patches folder with three random files: any-type, inpainting, and one on two targets."""
    import folder_paths

    path = comfy_dirs / "models" / "model_patches"
    path.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("model_patches", str(path), is_default=True)
    random_anima_lllite(model, path / "any.safetensors", seed=1)
    random_anima_lllite(model, path / "inpaint.safetensors", seed=4, in_channels=4)
    random_anima_lllite(model, path / "other.safetensors", seed=8, targets=("self_attn_q_proj", "mlp_layer1"))
    return path


def _core(model, name, image_bhwc, strength=1.0, start=0.0, end=1.0, mask=None):
    from comfy_extras.nodes_model_patch import AnimaLLLiteApply, ModelPatchLoader

    (patch,) = ModelPatchLoader().load_model_patch(name)
    return AnimaLLLiteApply().apply_patch(model, patch, image_bhwc, strength, start, end, mask)[0]


def _guide(h, w, seed=2, batch=1):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_any_type_equals_core_with_strength_and_cfg_batch(model, patch_dir):
    network = read_lllite(str(patch_dir / "any.safetensors"))
    assert isinstance(network, AnimaLLLiteNetwork) and not network.inpainting
    guide = _guide(64, 96)
    x = torch.randn(2, 16, 1, 8, 12, generator=torch.Generator().manual_seed(3))  # 64x96 pixels
    bare = dit(model, x, cond_or_uncond=(1, 0))
    for strength in (1.0, 0.6):
        ours = dit(apply_lllite(model, network, guide, strength), x, cond_or_uncond=(1, 0))
        core = dit(_core(model, "any.safetensors", guide.movedim(1, -1), strength), x, cond_or_uncond=(1, 0))
        assert _rel(core, bare) > 0.05, "the LLLite must change the output measurably for the test to mean anything"
        assert _rel(ours, core) < TOL
    assert torch.equal(dit(model, x, cond_or_uncond=(1, 0)), bare)  # the model itself is untouched


def test_inpainting_mask_is_the_fourth_channel_as_core(model, patch_dir):
    network = read_lllite(str(patch_dir / "inpaint.safetensors"))
    assert network.inpainting
    guide = _guide(64, 64, seed=5)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    ours = dit(apply_lllite(model, network, guide, 1.0, mask=mask), x)
    core = dit(_core(model, "inpaint.safetensors", guide.movedim(1, -1), mask=mask), x)
    assert _rel(ours, core) < TOL
    no_mask_ours = dit(apply_lllite(model, network, guide, 1.0), x)
    no_mask_core = dit(_core(model, "inpaint.safetensors", guide.movedim(1, -1)), x)
    assert _rel(no_mask_ours, no_mask_core) < TOL
    assert _rel(ours, no_mask_ours) > 1e-3  # the mask channel matters


def test_sampling_with_start_end_equals_core(model, patch_dir):
    network = read_lllite(str(patch_dir / "any.safetensors"))
    guide = _guide(64, 64, seed=7)
    latent = torch.zeros(1, 16, 1, 8, 8)
    ours = sample(apply_lllite(model, network, guide, 1.0, 0.3, 0.8), latent)
    core = sample(_core(model, "any.safetensors", guide.movedim(1, -1), 1.0, 0.3, 0.8), latent)
    whole = sample(apply_lllite(model, network, guide, 1.0), latent)
    assert _rel(ours, core) < TOL
    assert _rel(ours, whole) > 1e-3  # the range matters


def test_several_lllites_sum_in_any_order_and_mix_with_a_lora(model, patch_dir):
    import comfy.sd

    a = read_lllite(str(patch_dir / "any.safetensors"))
    b = read_lllite(str(patch_dir / "other.safetensors"))
    ga, gb = _guide(64, 64, seed=9), _guide(32, 48, seed=10)  # b's guide is fitted (another size and aspect)
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    ab = dit(apply_lllite(apply_lllite(model, a, ga, 0.8), b, gb, 0.5), x)
    ba = dit(apply_lllite(apply_lllite(model, b, gb, 0.5), a, ga, 0.8), x)
    only_a = dit(apply_lllite(model, a, ga, 0.8), x)
    assert _rel(ab, ba) < TOL  # each sees the block's original inputs: order does not matter
    assert _rel(ab, only_a) > 1e-3

    lora = {"lora_unet_blocks_1_mlp_layer2.lora_up.weight": torch.randn(64, 4) * 0.3,
            "lora_unet_blocks_1_mlp_layer2.lora_down.weight": torch.randn(4, 256) * 0.3}
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert len(with_lora.patches) == 1
    both = dit(apply_lllite(with_lora, a, ga, 0.8), x)
    core_both = dit(_core(with_lora, "any.safetensors", ga.movedim(1, -1), 0.8), x)
    assert _rel(both, core_both) < TOL and _rel(both, only_a) > 1e-3


@pytest.mark.parametrize("latent_hw", [(5, 7), (9, 4)])
def test_any_picture_size_the_model_takes(model, patch_dir, latent_hw):
    """Odd latent sizes: the DiT pads to its 2x2 patches; the guide is fitted to the padded grid."""
    network = read_lllite(str(patch_dir / "any.safetensors"))
    x = torch.randn(1, 16, 1, *latent_hw, generator=torch.Generator().manual_seed(12))
    out = dit(apply_lllite(model, network, _guide(50, 70), 1.0), x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert _rel(out, dit(model, x)) > 1e-3


def test_mask_limits_an_any_type_lllite(model, patch_dir):
    network = read_lllite(str(patch_dir / "any.safetensors"))
    guide = _guide(64, 64, seed=13)
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(14))
    full = dit(apply_lllite(model, network, guide, 1.0), x)
    assert _rel(dit(apply_lllite(model, network, guide, 1.0, mask=torch.ones(1, 64, 64)), x), full) < TOL
    assert torch.equal(dit(apply_lllite(model, network, guide, 1.0, mask=torch.zeros(1, 64, 64)), x), dit(model, x))


def test_wrong_family_is_refused_by_name(model, tiny, patch_dir):
    from lllite_testing import random_network

    sdxl = tiny.build_model("sdxl", 0)
    with pytest.raises(ValueError, match="is an Anima LLLite; the model is sdxl"):
        apply_lllite(sdxl, read_lllite(str(patch_dir / "any.safetensors")), _guide(64, 64))
    with pytest.raises(ValueError, match="does not exist in the model"):
        apply_lllite(model, random_network(sdxl), _guide(64, 64))


def _graph_prompt(lllite, strength=1.0, mask=False, apply=True):
    prompt = {
        "1": {"class_type": "LLLiteKitTest_TinyAnima", "inputs": {"seed": 0}},
        "2": {"class_type": "LLLiteKit_LoadLLLite", "inputs": {"lllite_name": lllite}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 80, "batch_size": 1, "color": 0xFFFFFF}},
        "5": {"class_type": "LLLiteKit_ApplyLLLite", "inputs": {"model": ["1", 0], "lllite": ["2", 0], "image": ["3", 0],
              "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "resize_mode": "crop"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a disc"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 72, "height": 104, "batch_size": 2}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["5", 0] if apply else ["1", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["8", 0], "seed": 1, "steps": 2, "cfg": 4.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "anima_graph"}},  # no decode: the VAE is slow on CPU
    }
    if mask:
        prompt["11"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 72, "height": 104}}
        prompt["5"]["inputs"]["mask"] = ["11", 0]
    if not apply:
        del prompt["5"], prompt["2"]
    return prompt


def test_graph_loads_from_model_patches_and_samples_at_any_size(graph, patch_dir):
    """LoadLLLite lists core's model_patches folder; 72x104 pixels, batch 2, CFG, text through Qwen3 + the DiT's adapter."""
    from lllite_kit.nodes.lllite_nodes import lllite_files

    assert {"any.safetensors", "inpaint.safetensors"} <= set(lllite_files())

    def latent(prompt):
        graph.run(prompt)
        return graph.node_outputs("9")[0][0]["samples"]

    controlled = latent(_graph_prompt("any.safetensors"))
    bare = latent(_graph_prompt("any.safetensors", apply=False))
    assert controlled.shape == bare.shape and torch.isfinite(controlled).all()
    assert (controlled - bare).abs().max() > 1e-3
    inpainted = latent(_graph_prompt("inpaint.safetensors", mask=True))
    assert torch.isfinite(inpainted).all() and (inpainted - bare).abs().max() > 1e-3
