"""Fidelity: at strength 1 over the whole schedule and a multiple-of-32 size, the patched model
computes exactly kohya's algorithm. The reference (lllite_testing.hook_reference) re-implements
the module math in plain torch from the file's tensors and adds it through forward pre-hooks on
the U-Net's Linears, the way kohya's network wraps them; it shares no code with lllite/."""
import pytest
import torch
from safetensors.torch import load_file

from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite, save_lllite
from lllite_testing import hook_reference, random_network, sample, unet


def _file_network(tmp_path, model, seed, family="sdxl", output_blocks=False):
    path = tmp_path / f"net{seed}.safetensors"
    save_lllite(str(path), random_network(model, family, seed=seed, output_blocks=output_blocks))
    return read_lllite(str(path)), load_file(str(path))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.build_model("sdxl", seed=0)


@pytest.mark.parametrize("output_blocks", [False, True], ids=["kohya-default", "with-output-blocks"])
def test_unet_output_equals_kohya_reference(model, tmp_path, output_blocks):
    network, tensors = _file_network(tmp_path, model, seed=1, output_blocks=output_blocks)
    assert any(k.startswith("lllite_unet_output_blocks_") for k in tensors) == output_blocks
    guide = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    patched = apply_lllite(model, network, guide, 1.0, 0.0, 1.0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    bare = unet(model, x, sigma=3.0, cond_or_uncond=(1, 0))
    ours = unet(patched, x, sigma=3.0, cond_or_uncond=(1, 0))
    handles = hook_reference(model.model.diffusion_model, [(tensors, guide * 2 - 1, 1.0)])
    try:
        reference = unet(model, x, sigma=3.0, cond_or_uncond=(1, 0))
    finally:
        for h in handles:
            h.remove()

    assert _rel(reference, bare) > 1e-2, "the LLLite must change the output measurably for this test to mean anything"
    assert _rel(ours, reference) < 1e-5
    assert torch.equal(unet(model, x, sigma=3.0, cond_or_uncond=(1, 0)), bare)  # hooks gone, model untouched


def test_sampling_equals_kohya_reference_and_strength_scales(model, tmp_path):
    network, tensors = _file_network(tmp_path, model, seed=4)
    guide = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    latent = torch.zeros(1, 4, 8, 12)  # 64x96 pixels: a multiple of 32, not square

    ours = sample(apply_lllite(model, network, guide, 1.0, 0.0, 1.0), latent, steps=2)
    half = sample(apply_lllite(model, network, guide, 0.5, 0.0, 1.0), latent, steps=2)
    handles = hook_reference(model.model.diffusion_model, [(tensors, guide * 2 - 1, 1.0)])
    try:
        reference = sample(model, latent, steps=2)
    finally:
        for h in handles:
            h.remove()
    bare = sample(model, latent, steps=2)
    assert _rel(reference, bare) > 1e-2
    assert _rel(ours, reference) < 1e-4
    assert 1e-3 < _rel(half, bare) < _rel(ours, bare)
