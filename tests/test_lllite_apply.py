"""Applying LLLite: sigma gating, any size, batches, caching, several at once, precision, no leaks."""
import pytest
import torch

import comfy.samplers
from lllite_kit.lllite.module import LLLiteModule
from lllite_kit.lllite.patch import LLLiteControl, LLLitePatch, apply_lllite
from lllite_testing import hook_reference, random_network, sample, unet


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.build_model("sdxl", seed=0)


@pytest.fixture(scope="module")
def net_a(model):
    return random_network(model, seed=1, name="a")


@pytest.fixture(scope="module")
def net_b(model):
    return random_network(model, seed=2, name="b")


def _guide(seed, b=1, h=64, w=64):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _x(seed, b=1, h=8, w=8):
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def active_sigmas(monkeypatch):
    """(sigma, batch) of every U-Net call in which an LLLite module acted."""
    seen = []
    deltas = LLLiteControl.deltas

    def spy(self, keys, x, extra_options):
        seen.append((round(float(extra_options["sigmas"][0]), 4), x.shape[0]))
        return deltas(self, keys, x, extra_options)

    monkeypatch.setattr(LLLiteControl, "deltas", spy)
    return seen


def _expected_active(model, steps, start, end):
    sampling = model.get_model_object("model_sampling")
    hi, lo = sampling.percent_to_sigma(start), sampling.percent_to_sigma(end)
    schedule = comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1]
    return {round(float(s), 4) for s in schedule if lo <= s <= hi}, len(schedule)


def test_range_follows_sigma_with_cfg_batching_and_chained_samplers(model, net_a, active_sigmas):
    """kohya's node counts U-Net calls, which breaks when cond and uncond share a call (CFG) or
    a second KSamplerAdvanced continues the schedule; the range here is in sigma, so the same
    steps are controlled every way, and a chain of two samplers equals one sampler."""
    patched = apply_lllite(model, net_a, _guide(0), 1.0, 0.3, 0.7)
    expected, n_steps = _expected_active(model, 6, 0.3, 0.7)
    assert 0 < len(expected) < n_steps
    latent = torch.zeros(1, 4, 8, 8)

    one = sample(patched, latent, steps=6, cfg=5.0)
    assert {s for s, _ in active_sigmas} == expected
    assert {b for _, b in active_sigmas} == {2}  # cond and uncond in one batch

    active_sigmas.clear()
    first = sample(patched, latent, steps=6, cfg=5.0, start_step=0, last_step=3, force_full_denoise=False)
    chained = sample(patched, first, steps=6, cfg=5.0, start_step=3, last_step=6, add_noise=False)
    assert {s for s, _ in active_sigmas} == expected
    assert torch.allclose(chained, one, atol=1e-5)

    active_sigmas.clear()
    sample(patched, latent, steps=6, cfg=1.0)  # ComfyUI skips the uncond pass at cfg 1
    assert {s for s, _ in active_sigmas} == expected
    assert {b for _, b in active_sigmas} == {1}


def test_size_not_multiple_of_32_and_guide_of_another_size(model, net_a):
    """The 'Sizes of tensors must match' case of kohya's node: 72x104 pixels (latent 9x13, token
    grids 5x7 and 3x4) with a 64x64 guide; the embedding is fitted to each block's grid."""
    patched = apply_lllite(model, net_a, _guide(1), 1.0, 0.0, 1.0, "crop")
    x = _x(2, h=13, w=9)
    out = unet(patched, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert _rel(out, unet(model, x)) > 1e-3
    control = patched.model_options["transformer_options"]["patches"]["attn1_patch"][0].controls[0]
    (size_key, cache), = control._sizes.items()
    assert size_key[2:4] == (104, 72) and cache.guide.shape == (1, 3, 104, 72)
    assert {p.shape[1] for p in cache.projected.values()} == {7 * 5, 4 * 3}
    latent = sample(patched, torch.zeros(2, 4, 13, 9), steps=2)
    assert latent.shape == (2, 4, 13, 9) and torch.isfinite(latent).all()


def test_guide_batches_cond_uncond_layouts_and_later_batch_sizes(model, net_a):
    g0, g1 = _guide(3), _guide(4)
    xa, xb = _x(5, 2), _x(6, 2)
    both = apply_lllite(model, net_a, torch.cat([g0, g1]), 1.0, 0.0, 1.0)
    only0 = apply_lllite(model, net_a, g0, 1.0, 0.0, 1.0)
    only1 = apply_lllite(model, net_a, g1, 1.0, 0.0, 1.0)

    # cond and uncond batched together (2 chunks of the latent batch 2) or run separately
    together = unet(both, torch.cat([xa, xb]), cond_or_uncond=(1, 0))
    separate = torch.cat([unet(both, xa, cond_or_uncond=(1,)), unet(both, xb, cond_or_uncond=(0,))])
    assert torch.allclose(together, separate, atol=1e-5, rtol=1e-4)
    # guide i steers latent i in every chunk; a guide batch of 1 steers all
    assert torch.allclose(together[[0, 2]], unet(only0, torch.cat([xa, xb]), cond_or_uncond=(1, 0))[[0, 2]], atol=1e-5, rtol=1e-4)
    assert torch.allclose(together[[1, 3]], unet(only1, torch.cat([xa, xb]), cond_or_uncond=(1, 0))[[1, 3]], atol=1e-5, rtol=1e-4)
    # a later call with another batch size
    assert torch.isfinite(unet(only0, _x(7, 3), cond_or_uncond=(1, 0, 1)[:1])).all()
    with pytest.raises(ValueError, match="'a': the guide image has a batch of 2, the latent batch is 3"):
        unet(both, _x(7, 3))


def test_embedding_is_computed_once_per_guide_size_dtype_device(model, net_a, monkeypatch):
    calls = []
    embed = LLLiteModule.embed
    monkeypatch.setattr(LLLiteModule, "embed", lambda self, g: calls.append(g.shape) or embed(self, g))
    patched = apply_lllite(model, net_a, _guide(8), 1.0, 0.0, 1.0)
    unet(patched, _x(1, 2), sigma=8.0, cond_or_uncond=(1, 0))
    unet(patched, _x(2, 1), sigma=2.0)
    sample(patched, torch.zeros(3, 4, 8, 8), steps=2)
    assert len(calls) == 136  # once per module, across steps, calls, runs and batch sizes
    unet(patched, _x(3, h=12, w=8))
    assert len(calls) == 2 * 136 and calls[-1] == (1, 3, 96, 64)  # a new size: computed once more


def test_two_lllites_act_in_parallel_on_the_original_inputs(model, net_a, net_b):
    ga, gb = _guide(10), _guide(11)
    with_a = apply_lllite(model, net_a, ga, 1.0, 0.0, 1.0)
    x = _x(12, 2)
    a_before = unet(with_a, x, cond_or_uncond=(1, 0))
    with_ab = apply_lllite(with_a, net_b, gb, 0.7, 0.0, 1.0)

    patches = with_ab.model_options["transformer_options"]["patches"]
    assert [len(p.controls) for p in patches["attn1_patch"] + patches["attn2_patch"]] == [2, 2]
    assert all(isinstance(p, LLLitePatch) for p in patches["attn1_patch"] + patches["attn2_patch"])
    ours = unet(with_ab, x, cond_or_uncond=(1, 0))
    handles = hook_reference(model.model.diffusion_model, [(net_a.state_dict(), ga * 2 - 1, 1.0), (net_b.state_dict(), gb * 2 - 1, 0.7)])
    try:
        reference = unet(model, x, cond_or_uncond=(1, 0))
    finally:
        for h in handles:
            h.remove()
    assert _rel(ours, reference) < 1e-5 and _rel(ours, a_before) > 1e-3
    assert torch.equal(unet(with_a, x, cond_or_uncond=(1, 0)), a_before)  # the upstream model is unchanged

    # each keeps its own range: at a high sigma only the LLLite whose range covers it acts
    late_b = apply_lllite(with_a, net_b, gb, 0.7, 0.5, 1.0)
    assert torch.allclose(unet(late_b, x, sigma=14.0), unet(with_a, x, sigma=14.0), atol=1e-6)
    assert _rel(unet(late_b, x, sigma=0.3), unet(with_a, x, sigma=0.3)) > 1e-3


def test_mask_limits_where_the_control_acts(model, net_a):
    x = _x(13, h=8, w=12)
    bare, full = unet(model, x), unet(apply_lllite(model, net_a, _guide(14), 1.0, 0.0, 1.0), x)
    zeros = apply_lllite(model, net_a, _guide(14), 1.0, 0.0, 1.0, mask=torch.zeros(64, 96))
    ones = apply_lllite(model, net_a, _guide(14), 1.0, 0.0, 1.0, mask=torch.ones(1, 64, 96))
    left = torch.zeros(1, 64, 96)
    left[..., :48] = 1.0
    half = unet(apply_lllite(model, net_a, _guide(14), 1.0, 0.0, 1.0, mask=left), x)
    assert torch.allclose(unet(zeros, x), bare, atol=1e-6)
    assert torch.allclose(unet(ones, x), full, atol=1e-6)
    assert _rel(half, bare) > 1e-3 and _rel(half, full) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(tiny, net_a, dtype):
    """The LLLite's effect in fp16/bf16 matches fp32; the fp32 weights are never rounded."""
    g, x = _guide(15), _x(16, 2)
    m32, mlow = tiny.build_model("sdxl", 0), tiny.build_model("sdxl", 0, dtype=dtype)
    effect32 = unet(apply_lllite(m32, net_a, g), x, cond_or_uncond=(1, 0)) - unet(m32, x, cond_or_uncond=(1, 0))
    patched = apply_lllite(mlow, net_a, g)
    effect = (unet(patched, x.to(dtype), cond_or_uncond=(1, 0)) - unet(mlow, x.to(dtype), cond_or_uncond=(1, 0))).float()
    cos = torch.nn.functional.cosine_similarity(effect.flatten(), effect32.flatten(), dim=0)
    assert cos > 0.95 and torch.isfinite(effect).all()
    latent = sample(patched, torch.zeros(1, 4, 8, 8), steps=2)
    assert torch.isfinite(latent).all()
    control = patched.model_options["transformer_options"]["patches"]["attn1_patch"][0].controls[0]
    assert next(control._placed.parameters()).dtype == dtype and next(net_a.parameters()).dtype == torch.float32


def test_patch_follows_device_and_dtype_moves(model, net_a):
    """ComfyUI calls patch.to(device) and patch.to(model dtype) when it loads or offloads a model:
    copies that no longer match are dropped (freeing their memory), the next call places one
    on the input's device and dtype."""
    patched = apply_lllite(model, net_a, _guide(17))
    patch = patched.model_options["transformer_options"]["patches"]["attn1_patch"][0]
    expected = unet(patched, _x(18))
    control = patch.controls[0]
    placed = control._placed
    assert patch.to(torch.float32) is patch and patch.to("cpu") is patch
    patch.to(torch.float8_e4m3fn)  # a storage-only dtype says nothing about the compute dtype
    assert control._placed is placed and len(control._sizes) == 1
    patch.to(torch.bfloat16)
    assert control._placed is None and len(control._sizes) == 1
    assert torch.equal(unet(patched, _x(18)), expected)
    patch.to(torch.device("meta"))  # another device: the copy and the caches of the old one go
    assert control._placed is None and len(control._sizes) == 0
    patch.to(torch.device("cpu"))
    assert torch.equal(unet(patched, _x(18)), expected)
    assert next(net_a.parameters()).device.type == "cpu" and next(net_a.parameters()).dtype == torch.float32


def test_runs_with_autograd_after_inference_runs(model, net_a):
    """Graphs run in inference mode; a training node may later run the same patched model with
    gradients, which inference tensors (cached copies, embeddings) would refuse."""
    patched = apply_lllite(model, net_a, _guide(20))
    expected = unet(patched, _x(21))
    x = _x(21).requires_grad_(True)
    out = unet(patched, x, grad=True)
    out.square().mean().backward()
    assert torch.allclose(out.detach(), expected, atol=1e-6) and torch.isfinite(x.grad).all()


def test_nothing_leaks_into_a_later_run_without_the_node(model, net_a):
    latent = torch.zeros(1, 4, 8, 8)
    before = sample(model, latent, steps=2)
    patched = sample(apply_lllite(model, net_a, _guide(19)), latent, steps=2)
    after = sample(model, latent, steps=2)
    assert _rel(patched, before) > 1e-3
    assert torch.equal(after, before)
    assert "patches" not in model.model_options["transformer_options"]


def test_strength_zero_and_bad_ranges(model, net_a):
    assert "patches" not in apply_lllite(model, net_a, _guide(0), 0.0).model_options["transformer_options"]
    with pytest.raises(ValueError, match="start_percent <= end_percent"):
        apply_lllite(model, net_a, _guide(0), 1.0, 0.8, 0.2)
