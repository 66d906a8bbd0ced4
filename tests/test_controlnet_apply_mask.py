"""Apply ControlNet's mask and start/end window, in numbers on the tiny SD1.5 model: a mask of
ones is no mask and a mask of zeros is the bare model (whole sampling runs compared exactly);
a half mask keeps the left half of every control output and zeroes the right half at that
output's resolution (the 1-pixel outputs get the half-and-half blend); masked controls stack
on previous ones (core's apply, with an LLLite on the model); outside start_percent..end_percent (by noise level) sampling equals the bare
model at either end of the schedule."""
import pytest
import torch

import comfy.controlnet
import comfy.model_management
import nodes
from controlnet_testing import build_model, perturb
from lllite_kit.nodes.controlnet_nodes import ApplyControlNet
from lllite_kit.training.controlnet.control_modes import BALANCED, PROMPT, with_control_mode
from lllite_kit.training.controlnet.network import ControlNetError, controlnet_from_unet
from lllite_kit.lllite.patch import apply_lllite
from lllite_testing import conditioning, random_network, sample

SIZE = 64  # picture; the latent is 8x8, the control outputs 8, 4, 2 and 1 pixels wide


@pytest.fixture(scope="module")
def setup():
    model = build_model("sd15", seed=0)
    cn = controlnet_from_unet(model.model.diffusion_model, model.model.model_config.unet_config)
    perturb(cn, seed=6)
    control = comfy.controlnet.ControlNet(cn, load_device=comfy.model_management.get_torch_device())
    g = torch.Generator().manual_seed(3)
    return {"model": model, "control": control, "image": torch.rand(1, SIZE, SIZE, 3, generator=g),
            "x": torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g), "context": torch.randn(2, 7, 40, generator=g)}


def _outputs(setup, control, hint=None, weight=0.7, chunks=2, previous=None):
    """Every control output at sigma 3 for a batch of two rows, as the sampler asks for them:
    chunks 2: cond and uncond of one latent; chunks 1: the cond of two latents."""
    c = control.copy().set_cond_hint((setup["image"] if hint is None else hint).movedim(-1, 1), weight, (0.0, 1.0))
    c.set_previous_controlnet(previous)
    model = setup["model"].model
    c.pre_run(model, model.model_sampling.percent_to_sigma)
    with torch.no_grad():
        out = c.get_control(setup["x"], torch.full((2,), 3.0), {"c_crossattn": setup["context"]}, chunks,
                            {"cond_or_uncond": [0, 1][:chunks]})
    c.cleanup()
    return out["output"] + out["middle"]


def _sampled(setup, positive, negative, **kw):
    return sample(setup["model"], torch.zeros(1, 4, SIZE // 8, SIZE // 8), family="sd15", positive=positive,
                  negative=negative, **kw)


def _applied(setup, start=0.0, end=1.0, mask=None, mode=BALANCED):
    positive, negative = conditioning("sd15")
    return ApplyControlNet.execute(positive, negative, setup["control"], setup["image"], 1.0, start, end, mode, False, "",
                                   mask=mask).args


def test_half_mask_keeps_the_left_half_of_every_output_at_its_resolution(setup):
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, : SIZE // 2] = 1.0
    plain = _outputs(setup, setup["control"])
    masked = _outputs(setup, with_control_mode(setup["control"], mask=mask))
    widths = set()
    for p, m in zip(plain, masked):
        w = p.shape[-1]
        widths.add(w)
        assert p.abs().max() > 0
        if w == 1:  # bilinear at one pixel: half the mask's area
            assert torch.allclose(m, p * 0.5, rtol=1e-6, atol=0)
        else:
            assert torch.equal(m[..., : w // 2], p[..., : w // 2]) and not m[..., w // 2:].any()
    assert widths == {8, 4, 2, 1}

    ones = _outputs(setup, with_control_mode(setup["control"], PROMPT, mask=torch.ones(SIZE, SIZE)))
    soft = _outputs(setup, with_control_mode(setup["control"], PROMPT))
    assert all(torch.equal(a, b) for a, b in zip(ones, soft))  # the mask composes with a control mode


def test_masked_control_stacks_on_the_previous_one_and_checks_the_mask_batch(setup):
    prev = setup["control"].copy().set_cond_hint(setup["image"].movedim(-1, 1) * 0.5, 1.0, (0.0, 1.0))
    zeroed = with_control_mode(setup["control"], mask=torch.zeros(1, SIZE, SIZE))
    stacked = _outputs(setup, zeroed, previous=prev)
    alone = _outputs(setup, setup["control"], hint=setup["image"] * 0.5, weight=1.0)
    assert all(torch.equal(a, b) for a, b in zip(stacked, alone))  # the mask is on this control only

    with pytest.raises(ControlNetError, match="mask has a batch of 3, the latent batch is 1"):
        _outputs(setup, with_control_mode(setup["control"], mask=torch.ones(3, SIZE, SIZE)))
    plain = _outputs(setup, setup["control"], chunks=1)
    per_latent = _outputs(setup, with_control_mode(setup["control"], mask=torch.stack([torch.ones(SIZE, SIZE),
                                                                                      torch.zeros(SIZE, SIZE)])), chunks=1)
    assert all(torch.equal(m[0], p[0]) and not m[1].any() for m, p in zip(per_latent, plain))  # one mask per latent


def test_mask_of_ones_is_no_mask_and_mask_of_zeros_is_the_bare_model(setup):
    bare = _sampled(setup, *conditioning("sd15"), steps=1)
    unmasked = _sampled(setup, *_applied(setup), steps=1)
    assert (unmasked - bare).abs().max() > 1e-3 * bare.abs().max()  # the control acts
    assert torch.equal(_sampled(setup, *_applied(setup, mask=torch.ones(1, SIZE, SIZE)), steps=1), unmasked)
    assert torch.equal(_sampled(setup, *_applied(setup, mask=torch.zeros(SIZE, SIZE)), steps=1), bare)


def test_outside_the_start_end_window_sampling_is_the_bare_model(setup):
    # one step at the highest noise level (percent 0), and the last of four steps (percent ~0.75)
    first, last = {"steps": 1}, {"steps": 4, "start_step": 3, "last_step": 4}
    for when, active, inactive in ((first, (0.0, 0.5), (0.5, 1.0)), (last, (0.5, 1.0), (0.0, 0.5))):
        bare = _sampled(setup, *conditioning("sd15"), **when)
        assert torch.equal(_sampled(setup, *_applied(setup, *inactive), **when), bare)
        on = _sampled(setup, *_applied(setup, *active), **when)
        assert (on - bare).abs().max() > 1e-3 * bare.abs().max()
    with pytest.raises(ControlNetError, match="start_percent <= end_percent"):
        _applied(setup, 0.6, 0.4)


def test_stacks_on_cores_apply_with_an_lllite_on_the_model(setup):
    model = apply_lllite(setup["model"], random_network(setup["model"], "sd15", scale=0.05), setup["image"].movedim(-1, 1))
    core = nodes.ControlNetApplyAdvanced().apply_controlnet(*conditioning("sd15"), setup["control"], setup["image"] * 0.5,
                                                            0.8, 0.0, 1.0)

    def ours(mask):
        return ApplyControlNet.execute(*core, setup["control"], setup["image"], 1.0, 0.0, 1.0, PROMPT, False, "",
                                       mask=mask).args

    def run(positive, negative, patched=model):
        return sample(patched, torch.zeros(1, 4, SIZE // 8, SIZE // 8), family="sd15", positive=positive,
                      negative=negative, steps=1)

    only_core = run(*core)
    assert (only_core - run(*core, patched=setup["model"])).abs().max() > 1e-3 * only_core.abs().max()  # the LLLite acts
    assert torch.equal(run(*ours(torch.zeros(SIZE, SIZE))), only_core)  # masked out: core's control and the LLLite remain
    both = run(*ours(torch.ones(SIZE, SIZE)))
    assert (both - only_core).abs().max() > 1e-3 * only_core.abs().max()
