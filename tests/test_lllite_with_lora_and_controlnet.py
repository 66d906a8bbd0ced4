"""LLLite together with a LoRA (core LoraLoaderModelOnly, a tiny kohya-format LoRA file) and a
core ControlNet (comfy.controlnet.ControlNet around a tiny cldm ControlNet built from the tiny
SDXL U-Net config: ComfyUI's file loader only detects real-size ControlNets, so the model object
is built directly and applied with core's ControlNetApplyAdvanced)."""
import torch
from safetensors.torch import save_file

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import nodes
from lllite_kit.lllite.patch import apply_lllite
from lllite_testing import conditioning, hook_reference, random_network, sample


def _tiny_lora(path):
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for block, width in (("input_blocks_4_1_transformer_blocks_0", 64), ("middle_block_1_transformer_blocks_3", 128)):
        for target in ("attn1_to_q", "attn1_to_v", "ff_net_2"):
            name = f"lora_unet_{block}_{target}"
            tensors[f"{name}.lora_down.weight"] = torch.randn(4, width * (4 if target == "ff_net_2" else 1), generator=g) * 0.3
            tensors[f"{name}.lora_up.weight"] = torch.randn(width, 4, generator=g) * 0.3
            tensors[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))


def _tiny_controlnet(model, tiny):
    config = dict(model.model.model_config.unet_config)
    config.pop("out_channels")
    control = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init, device="cpu")
    tiny.fill_seeded(control, seed=9)
    return comfy.controlnet.ControlNet(control, load_device=comfy.model_management.get_torch_device())


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_lllite_with_lora_and_core_controlnet(tiny, comfy_dirs):
    model = tiny.build_model("sdxl", seed=0)
    network = random_network(model, seed=3)
    guide = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    _tiny_lora(comfy_dirs / "models" / "loras" / "tiny_lora.safetensors")
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only
    positive, negative = conditioning()
    cn_image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    cn_pos, cn_neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, _tiny_controlnet(model, tiny), cn_image, 1.0, 0.0, 1.0)
    latent = torch.zeros(1, 4, 8, 8)
    run = lambda m, p=cn_pos, n=cn_neg: sample(m, latent, steps=2, positive=p, negative=n)  # noqa: E731

    lora_model = lora(model, "tiny_lora.safetensors", 1.0)[0]
    lllite_after_lora = run(apply_lllite(lora_model, network, guide))
    lora_after_lllite = run(lora(apply_lllite(model, network, guide), "tiny_lora.safetensors", 1.0)[0])
    assert torch.allclose(lllite_after_lora, lora_after_lllite, atol=1e-5)  # weights and attention inputs: order-free

    handles = hook_reference(model.model.diffusion_model, [(network.state_dict(), guide * 2 - 1, 1.0)])
    try:
        reference = run(lora_model)
    finally:
        for h in handles:
            h.remove()
    assert _rel(lllite_after_lora, reference) < 1e-4  # still exactly kohya's math with the others present

    # every ingredient acts
    assert _rel(lllite_after_lora, run(lora_model)) > 1e-3
    assert _rel(lllite_after_lora, run(apply_lllite(model, network, guide))) > 1e-3
    assert _rel(lllite_after_lora, run(apply_lllite(lora_model, network, guide), positive, negative)) > 1e-3
