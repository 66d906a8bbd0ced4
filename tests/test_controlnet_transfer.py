"""tool_transfer_control on tiny SD1.5 and SDXL models: A to A is the identity, A to B to A returns the
original, only the copied tensors move (by exactly B - A), the node's file loads in core, and
a base of another family is refused."""
import pytest
import torch

import comfy.controlnet
from controlnet_testing import build_model, perturb
from lllite_kit.nodes.controlnet_nodes import TransferControlNet
from lllite_kit.training.controlnet.network import ControlNetError, controlnet_from_unet
from lllite_kit.training.controlnet.transfer import transfer_control
from lllite_kit.training.controlnet.weights import read_controlnet, save_tensors


@pytest.fixture(scope="module")
def bases():
    a, b = build_model("sd15", seed=0), build_model("sd15", seed=1)
    cn = controlnet_from_unet(a.model.diffusion_model, a.model.model_config.unet_config)
    perturb(cn, seed=8)
    return a, b, {k: v.detach().clone() for k, v in cn.state_dict().items()}


def test_identity_round_trip_and_only_copied_tensors_move(bases):
    a, b, control = bases
    sa, sb = a.model.diffusion_model.state_dict(), b.model.diffusion_model.state_dict()
    assert all(torch.equal(v, control[k]) for k, v in transfer_control(control, sa, sa).items())
    moved = transfer_control(control, sa, sb)
    back = transfer_control(moved, sb, sa)
    assert all(torch.allclose(back[k], control[k], atol=1e-6) for k in control)
    for k, v in moved.items():
        if k in sa:
            assert torch.allclose(v - control[k], sb[k] - sa[k], atol=1e-6)
        else:
            assert torch.equal(v, control[k]) and k.startswith(("input_hint_block.", "zero_convs.", "middle_block_out."))


def test_node_writes_a_file_core_loads_and_refuses_another_family(bases, comfy_dirs, tiny):
    a, b, control = bases
    save_tensors(str(comfy_dirs / "models" / "controlnet" / "cn_a.safetensors"), control, torch.float32, {})
    out = TransferControlNet.execute("cn_a.safetensors", a, b, "cn_on_b", "float")
    loaded, name = out.args
    assert isinstance(loaded, comfy.controlnet.ControlNet) and name == "cn_on_b.safetensors"
    expected = transfer_control(control, a.model.diffusion_model.state_dict(), b.model.diffusion_model.state_dict())
    written = read_controlnet(str(comfy_dirs / "models" / "controlnet" / name))
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    with pytest.raises(ControlNetError, match="another family"):
        TransferControlNet.execute("cn_a.safetensors", a, tiny.build_model("sdxl", seed=0), "cn_bad", "float")


def test_sdxl_transfer_moves_label_emb_and_loads_in_core(comfy_dirs):
    a, b = build_model("sdxl", seed=0), build_model("sdxl", seed=1)
    cn = controlnet_from_unet(a.model.diffusion_model, a.model.model_config.unet_config)
    perturb(cn, seed=9)
    control = {k: v.detach().clone() for k, v in cn.state_dict().items()}
    save_tensors(str(comfy_dirs / "models" / "controlnet" / "cn_xl_a.safetensors"), control, torch.float32, {})
    loaded, name = TransferControlNet.execute("cn_xl_a.safetensors", a, b, "cn_xl_on_b", "float").args
    assert isinstance(loaded, comfy.controlnet.ControlNet)
    written = read_controlnet(str(comfy_dirs / "models" / "controlnet" / name))
    sa, sb = a.model.diffusion_model.state_dict(), b.model.diffusion_model.state_dict()
    key = "label_emb.0.0.weight"  # SDXL's size/crop embedding is copied from the U-Net, so it moves too
    assert torch.allclose(written[key] - control[key], sb[key] - sa[key], atol=1e-6)
    assert torch.equal(written["zero_convs.0.0.weight"], control["zero_convs.0.0.weight"])
    back = transfer_control(written, sb, sa)
    assert all(torch.allclose(back[k], control[k], atol=1e-6) for k in control)
