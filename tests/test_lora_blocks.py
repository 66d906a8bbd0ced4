"""Block numbering, lr-weight presets, and per-block ranks / learning rates on real module names."""
import math

import pytest

from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lllite_kit.training.lora.blocks import block_index, block_lr_weights, num_blocks
from lora_helpers import attached


def test_block_numbering_matches_sd_scripts():
    sd15 = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": 1,
        "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q": 2,
        "lora_unet_down_blocks_0_downsamplers_0_conv": 3,
        "lora_unet_down_blocks_1_resnets_0_conv1": 4,
        "lora_unet_down_blocks_3_resnets_1_conv2": 11,
        "lora_unet_mid_block_attentions_0_proj_out": 12,
        "lora_unet_up_blocks_0_resnets_2_conv1": 15,
        "lora_unet_up_blocks_1_attentions_0_proj_in": 16,
        "lora_unet_up_blocks_3_attentions_2_proj_out": 24,
    }
    for name, idx in sd15.items():
        assert block_index(name, "sd15") == idx, name
    sdxl = {
        "lora_unet_input_blocks_4_1_proj_in": 5,
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2": 9,
        "lora_unet_middle_block_1_proj_in": 11,
        "lora_unet_middle_block_2_in_layers_2": 12,
        "lora_unet_output_blocks_0_1_proj_out": 13,
        "lora_unet_output_blocks_8_0_skip_connection": 21,
    }
    for name, idx in sdxl.items():
        assert block_index(name, "sdxl") == idx, name
    assert (num_blocks("sd15"), num_blocks("sdxl")) == (25, 23)


def test_lr_weight_presets():
    w = block_lr_weights("sd15", down="sine", mid=2.0, up="cosine+.25")
    assert len(w) == 25
    down, mid, up = w[:12], w[12], w[13:]
    assert down[0] == 0.0 and down[-1] == pytest.approx(1.0) and down[6] == pytest.approx(math.sin(math.pi * 6 / 11 / 2))
    assert mid == 2.0
    assert up[0] == pytest.approx(1.25) and up[-1] == pytest.approx(0.25)
    lin = block_lr_weights("sdxl", down="linear", up="reverse_linear")
    assert len(lin) == 23 and lin[0] == 1.0 and lin[-1] == 1.0  # embedding / out placeholders
    assert lin[1:10] == pytest.approx([i / 8 for i in range(9)]) and lin[10:13] == [1.0] * 3
    assert lin[13:22] == pytest.approx([i / 8 for i in reversed(range(9))])
    assert block_lr_weights("sd15", down="zeros+0.5")[:12] == [0.5] * 12
    assert block_lr_weights("sd15") is None


def test_lr_weight_threshold_padding_and_errors(caplog):
    w = block_lr_weights("sd15", down="0.05,0.5,1", zero_threshold=0.1)
    assert w[:4] == [0.0, 0.5, 1.0, 1.0]  # below threshold -> 0; missing -> 1.0 (as sd-scripts)
    assert "down_lr_weight: 3 of 12 values" in caplog.text
    with pytest.raises(ValueError, match="13 values given"):
        block_lr_weights("sd15", up=",".join(["1"] * 13))
    with pytest.raises(ValueError, match="unknown preset 'tan'"):
        block_lr_weights("sd15", down="tan")


def test_block_dims_set_each_modules_rank(tiny):
    dims = list(range(1, 24))  # SDXL: 23 blocks, rank = block number + 1
    alphas = [d / 2 for d in dims]
    model, _, adapter = attached(tiny, "sdxl", train_text_encoder=False, block_dims=",".join(map(str, dims)),
                                 block_alphas=alphas, conv_block_dims=[2] * 23)
    assert adapter.modules
    for name, m in adapter.modules.items():
        i = block_index(name, "sdxl")
        if m.down_weight.ndim == 4 and m.down_weight.shape[-1] == 3:
            assert (m.rank, m.alpha) == (2, 1.0), name  # conv_block_alphas default: conv_alpha or 1
        else:
            assert (m.rank, m.alpha) == (dims[i], alphas[i]), name
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in adapter.modules
    assert adapter.modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"].rank == 6
    assert adapter.modules["lora_unet_input_blocks_1_0_in_layers_2"].rank == 2  # C3Lier via conv_block_dims
    with pytest.raises(ValueError, match="block_dims: 23 values expected on sdxl, got 25"):
        LoRAAdapter(LoRAConfig(block_dims=[4] * 25, train_text_encoder=False), model.model.model_config) \
            .attach(model.model.diffusion_model, {})


def test_block_lr_weights_give_per_block_groups_and_drop_zero_blocks(tiny):
    _, _, adapter = attached(tiny, "sd15", down_lr_weight="0,0,0,0,0,0,1,1,1,1,1,1", mid_lr_weight="2",
                             up_lr_weight="sine", block_lr_zero_threshold=0.2)
    weights = block_lr_weights("sd15", "0,0,0,0,0,0,1,1,1,1,1,1", "2", "sine", 0.2)
    blocks = {block_index(n, "sd15") for n in adapter.modules if n.startswith("lora_unet_")}
    assert blocks and all(weights[b] > 0.2 for b in blocks)
    assert not any(n.startswith("lora_unet_down_blocks_0_") or n.startswith("lora_unet_down_blocks_1_") for n in adapter.modules)
    groups = adapter.param_groups(1e-3, 5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["text_encoder"]["lr"] == 5e-4
    assert by_name["unet_block12"]["lr"] == pytest.approx(2e-3)
    for g in groups:
        if g["name"].startswith("unet_block"):
            assert g["lr"] == pytest.approx(1e-3 * weights[int(g["name"][len("unet_block"):])])
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for m in adapter.modules.values() for p in m.parameters()}
