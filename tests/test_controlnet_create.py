"""A ControlNet made from a base U-Net (tool_add_control), saved in lllyasviel's layout: core's
ControlNetLoader reads it, a fresh one changes nothing, and after its weights move, core's
ControlNetApplyAdvanced on the file predicts what our training-time forward predicts."""
import pytest
import torch
from safetensors import safe_open

from controlnet_testing import build_model, core_and_training_predictions, perturb
from lllite_kit.training.controlnet.adapter import ControlNetAdapter
from lllite_kit.training.controlnet.network import controlnet_from_unet


def _adapter(model, **kw):
    adapter = ControlNetAdapter(model.model.model_config.unet_config, "sd15", **kw)
    adapter.attach(model.model.diffusion_model, {})
    adapter.train(False)
    return adapter


def test_fresh_controlnet_copies_the_encoder_zeroes_its_convs_and_changes_nothing():
    model = build_model("sd15", seed=0)
    dm = model.model.diffusion_model
    control = controlnet_from_unet(dm, model.model.model_config.unet_config)
    unet, sd = dm.state_dict(), control.state_dict()
    copied = [k for k in sd if k in unet]
    assert {k.split(".")[0] for k in copied} == {"time_embed", "input_blocks", "middle_block"}
    assert all(torch.equal(sd[k], unet[k]) for k in copied)
    zero = [k for k in sd if k.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14."))]
    assert len(zero) == 2 * (12 + 1 + 1) and all(not sd[k].any() for k in zero)
    assert sd["input_hint_block.0.weight"].std() > 0.01  # the hint encoder is new, not zero
    assert set(sd) - set(copied) - set(zero) == {k for k in sd if k.startswith("input_hint_block.")} - set(zero)

    x, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([100.0, 700.0])
    context = torch.randn(2, 7, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bare = dm(x, t, context=context)
        adapter = _adapter(model)
        with adapter.using_guide(torch.rand(2, 3, 32, 32) * 2 - 1):
            controlled = dm(x, t, context=context)
        adapter.detach()
    assert torch.equal(bare, controlled)


def test_a_model_core_would_read_with_other_attention_heads_is_refused(tiny):
    model = tiny.build_model("sd15", seed=0)  # 16-channel heads; core's loader would build 64-channel ones
    with pytest.raises(ValueError, match="attention heads"):
        controlnet_from_unet(model.model.diffusion_model, model.model.model_config.unet_config)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_saved_file_loads_in_core_and_core_apply_predicts_like_training(family, comfy_dirs):
    model = build_model(family, seed=0)
    dm = model.model.diffusion_model
    adapter = ControlNetAdapter(model.model.model_config.unet_config, family)
    adapter.attach(dm, {})
    perturb(adapter.control)
    adapter.detach()
    name = f"cn_{family}.safetensors"
    path = comfy_dirs / "models" / "controlnet" / name
    adapter.save(str(path), torch.float32, {"ss_output_name": "cn"})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {"control_model." + k for k in adapter.control.state_dict()}
    if family == "sdxl":
        assert "control_model.label_emb.0.0.weight" in keys  # A1111 tells SDXL by label_emb

    control, bare, core_out, ours = core_and_training_predictions(model, adapter, name, family)
    loaded = control.control_model.state_dict()
    assert set(loaded) == set(adapter.control.state_dict())
    assert all(torch.equal(loaded[k].float(), v.cpu()) for k, v in adapter.control.state_dict().items())
    scale = core_out.abs().max().item()
    assert (core_out - bare).abs().max() > 1e-2 * scale  # the control acts
    assert torch.allclose(ours, core_out, rtol=1e-5, atol=1e-5 * scale), (ours - core_out).abs().max()
