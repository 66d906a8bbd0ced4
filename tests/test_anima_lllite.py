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
def patch_dir(comfy_dirs):
    import folder_paths

    path = comfy_dirs / "models" / "model_patches"
    path.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("model_patches", str(path), is_default=True)
    return path


def _core(model, name, image_bhwc, strength=1.0, start=0.0, end=1.0, mask=None):
    from comfy_extras.nodes_model_patch import AnimaLLLiteApply, ModelPatchLoader

    (patch,) = ModelPatchLoader().load_model_patch(name)
    return AnimaLLLiteApply().apply_patch(model, patch, image_bhwc, strength, start, end, mask)[0]


def _guide(h, w, seed=2, batch=1):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_any_type_equals_core_with_strength_and_cfg_batch(model, patch_dir):
    random_anima_lllite(model, patch_dir / "any.safetensors", seed=1)
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
    random_anima_lllite(model, patch_dir / "inpaint.safetensors", seed=4, in_channels=4)
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
