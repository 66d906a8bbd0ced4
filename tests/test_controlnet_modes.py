"""A1111's control modes on core's ControlNet objects, in numbers: each output scaled as
sd-webui-controlnet's hook.py scales it (weight * 0.825 ** (12 - i); SDXL the first 10),
"ControlNet is more important" zeroes the unconditional rows, Balanced is core's apply, a
moded control stacks on a previous one by core's sum, and cond rows do not depend on
whether CFG batches the unconditional half with them."""
import pytest
import torch

import comfy.controlnet
import comfy.model_management
import nodes
from controlnet_testing import build_model, perturb
from lllite_kit.nodes.controlnet_nodes import ApplyControlNet
from lllite_kit.training.controlnet.control_modes import (BALANCED, CONTROL, PROMPT, mode_scales, shape_control,
                                                        with_control_mode)
from lllite_kit.training.controlnet.network import controlnet_from_unet
from lllite_testing import conditioning


@pytest.fixture(scope="module")
def setup():
    model = build_model("sd15", seed=0)
    cn = controlnet_from_unet(model.model.diffusion_model, model.model.model_config.unet_config)
    perturb(cn, seed=6)
    control = comfy.controlnet.ControlNet(cn, load_device=comfy.model_management.get_torch_device())
    g = torch.Generator().manual_seed(2)
    return {"model": model, "control": control, "image": torch.rand(1, 3, 32, 32, generator=g),
            "x": torch.randn(2, 4, 4, 4, generator=g), "context": torch.randn(2, 7, 40, generator=g)}


def _control(setup, control, weight=0.7, rows=(0, 1)):
    return _run(setup, control.copy().set_cond_hint(setup["image"], weight, (0.0, 1.0)), rows)


def _run(setup, c, rows=(0, 1)):
    model = setup["model"].model
    c.pre_run(model, model.model_sampling.percent_to_sigma)
    n = len(rows)
    with torch.no_grad():
        out = c.get_control(setup["x"][:n], torch.full((n,), 3.0), {"c_crossattn": setup["context"][:n]}, n,
                            {"cond_or_uncond": list(rows)})
    c.cleanup()
    return out


def test_mode_scales_are_a1111s():
    assert mode_scales(BALANCED, 13) == [1.0] * 13
    soft = mode_scales(PROMPT, 13)
    assert soft[12] == 1.0 and soft[0] == pytest.approx(0.825 ** 12) and soft[5] == pytest.approx(0.825 ** 7)
    assert mode_scales(CONTROL, 10) == soft[:10]  # SDXL: A1111 cuts the SD1.5 list, the middle gets 0.825 ** 3
    c = {"output": [torch.ones(2, 1, 1, 1)] * 9, "middle": [torch.ones(2, 1, 1, 1)]}
    shaped = shape_control(c, CONTROL, None, [1, 0])  # uncond chunk first, then cond
    assert shaped["middle"][0][:, 0, 0, 0].tolist() == [0.0, pytest.approx(0.825 ** 3)]
    assert shaped["output"][0][:, 0, 0, 0].tolist() == [0.0, pytest.approx(0.825 ** 12)]


def test_balanced_is_cores_apply_and_each_mode_scales_as_a1111(setup):
    core = _control(setup, setup["control"])
    same = _control(setup, with_control_mode(setup["control"], BALANCED, [1.0] * 13))  # through the patch
    assert all(torch.equal(a, b) for a, b in zip(core["output"] + core["middle"], same["output"] + same["middle"]))
    assert with_control_mode(setup["control"], BALANCED) is setup["control"]

    prompt = _control(setup, with_control_mode(setup["control"], PROMPT))
    strong = _control(setup, with_control_mode(setup["control"], CONTROL))
    for i, c in enumerate(core["output"] + core["middle"]):
        p = (prompt["output"] + prompt["middle"])[i]
        s = (strong["output"] + strong["middle"])[i]
        assert torch.allclose(p, c * 0.825 ** (12 - i), rtol=1e-6, atol=0)
        assert torch.allclose(s[0], c[0] * 0.825 ** (12 - i), rtol=1e-6, atol=0) and not s[1].any()  # cond row / uncond row
    assert core["middle"][0].abs().max() > 0 and core["output"][0].abs().max() > 0


def test_modes_stack_on_a_previous_control_and_cond_rows_ignore_cfg_batching(setup):
    prev = setup["control"].copy().set_cond_hint(setup["image"] * 0.5, 1.0, (0.0, 1.0))
    moded = with_control_mode(setup["control"], CONTROL).copy().set_cond_hint(setup["image"], 0.7, (0.0, 1.0))
    stacked = _run(setup, moded.set_previous_controlnet(prev))
    half = _run(setup, setup["control"].copy().set_cond_hint(setup["image"] * 0.5, 1.0, (0.0, 1.0)))
    alone = _control(setup, with_control_mode(setup["control"], CONTROL))
    assert torch.allclose(stacked["middle"][0], half["middle"][0] + alone["middle"][0], rtol=1e-5)
    assert not torch.allclose(stacked["middle"][0], alone["middle"][0], rtol=1e-2)  # the previous one counts
    unbatched = _control(setup, with_control_mode(setup["control"], CONTROL), rows=(0,))
    scale = alone["output"][3][0].abs().max().item()
    assert torch.allclose(unbatched["output"][3][0], alone["output"][3][0], rtol=1e-5, atol=1e-5 * scale)  # float order only


def test_node_inverts_the_input_and_applies_to_both_conditionings(setup):
    positive, negative = conditioning("sd15")
    image = setup["image"].movedim(1, -1)
    pos, neg = ApplyControlNet.execute(positive, negative, setup["control"], image, 0.8, 0.1, 0.9, PROMPT, True, "").args
    for cond in (pos, neg):
        c = cond[0][1]["control"]
        assert c.control_mode == PROMPT and c.strength == 0.8 and c.timestep_percent_range == (0.1, 0.9)
        assert torch.allclose(c.cond_hint_original, 1.0 - setup["image"])
    core_pos, _ = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, setup["control"], image, 0.8, 0.1, 0.9)
    plain = ApplyControlNet.execute(positive, negative, setup["control"], image, 0.8, 0.1, 0.9, BALANCED, False, "").args[0]
    assert type(plain[0][1]["control"]) is type(core_pos[0][1]["control"])
    assert torch.equal(plain[0][1]["control"].cond_hint_original, core_pos[0][1]["control"].cond_hint_original)



def test_sampling_with_cfg_batched_and_unbatched_gives_the_same(setup, monkeypatch):
    """Whole sampling runs with ControlNet is more important (the mode that treats cond and
    uncond rows apart): cond and uncond in one U-Net call per step (core's default with free
    memory) or one call each (core's choice when memory is short, forced here through the free
    memory it reads) give the same latent."""
    import comfy.model_patcher
    from lllite_testing import sample

    positive, negative = conditioning("sd15")
    pos, neg = ApplyControlNet.execute(positive, negative, setup["control"], setup["image"].movedim(1, -1), 0.9, 0.0, 1.0,
                                       CONTROL, False, "").args
    calls = []
    handle = setup["model"].model.diffusion_model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))

    def run(positive=pos, negative=neg):
        calls.clear()
        return sample(setup["model"], torch.zeros(1, 4, 4, 4), steps=2, family="sd15", positive=positive, negative=negative)

    try:
        batched = run()
        assert calls == [2, 2]
        monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "get_free_memory", lambda self, device=None: 0)
        unbatched = run()
        assert calls == [1, 1, 1, 1]
        monkeypatch.undo()
        bare = run(positive, negative)
    finally:
        handle.remove()
    assert torch.allclose(batched, unbatched, rtol=1e-5, atol=1e-5 * batched.abs().max().item()), (batched - unbatched).abs().max()
    assert (batched - bare).abs().max() > 1e-3  # the control acts


def test_block_weights_replace_the_modes_scales_one_per_output(setup):
    from lllite_kit.training.controlnet.control_modes import parse_block_weights
    from lllite_kit.training.controlnet.network import ControlNetError

    core = _control(setup, setup["control"])  # weight 0.7: block weights multiply core's strength
    weights = parse_block_weights(", ".join(str(0.1 * i) for i in range(13)))
    shaped = _control(setup, with_control_mode(setup["control"], PROMPT, weights))  # A1111: advanced weighting wins
    for w, c, s in zip(weights, core["output"] + core["middle"], shaped["output"] + shaped["middle"]):
        assert torch.allclose(s, c * w, rtol=1e-6, atol=0)
    with pytest.raises(ControlNetError, match=r"13 outputs .*give 13 block weights, got 10"):
        _control(setup, with_control_mode(setup["control"], BALANCED, [1.0] * 10))
    with pytest.raises(ControlNetError, match="numbers separated by commas"):
        parse_block_weights("1, x")
