"""LoRAAdapter: kohya key names, which parts train at which rate, sd-scripts' options,
and starting from an existing LoRA file."""
import logging

import pytest
import torch

from lllite_kit.training.lora import LoRAAdapter, LoRAConfig, load_lora
from lora_helpers import attached, randomize, text_encoders, unet_prediction


def test_sdxl_key_names_are_kohyas(tiny):
    _, _, adapter = attached(tiny, "sdxl")
    names = set(adapter.modules)
    for n in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
              "lora_unet_input_blocks_4_1_proj_in", "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj",
              "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0",
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te2_text_model_encoder_layers_2_mlp_fc2"):
        assert n in names, n
    # the tiny U-Net keeps SDXL's depth: sd-scripts creates 722 U-Net LoRA-LierLa modules on SDXL
    assert sum(n.startswith("lora_unet_") for n in names) == 722
    assert sum(n.startswith("lora_te") for n in names) == 2 * 3 * 6  # 3 tiny layers x q,k,v,out,fc1,fc2
    assert adapter.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


def test_sd15_unet_uses_diffusers_names(tiny):
    _, _, adapter = attached(tiny, "sd15", conv_dim=2)
    names = set(adapter.modules)
    for n in ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
              "lora_unet_mid_block_attentions_0_proj_in", "lora_unet_up_blocks_3_attentions_2_proj_out",
              "lora_unet_down_blocks_0_resnets_1_conv1", "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
              "lora_unet_down_blocks_0_resnets_0_time_emb_proj", "lora_unet_down_blocks_2_downsamplers_0_conv",
              "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_mid_block_resnets_1_conv2",
              "lora_te_text_model_encoder_layers_0_mlp_fc1"):
        assert n in names, n
    assert not any("input_blocks" in n or "output_blocks" in n for n in names)
    lierla = {n for n in names if "resnets" not in n and "samplers" not in n and n.startswith("lora_unet_")}
    assert len(lierla) == 192  # sd-scripts' LoRA-LierLa module count on SD1.x
    assert adapter.modules["lora_unet_down_blocks_0_resnets_1_conv1"].rank == 2
    assert adapter.modules["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].rank == 4  # Linear: network dim


def test_unet_only_text_encoder_only_and_learning_rates(tiny):
    _, _, unet_only = attached(tiny, "sd15", train_text_encoder=False)
    assert not unet_only.trains_text_encoders
    assert all(n.startswith("lora_unet_") for n in unet_only.modules)
    assert [(g["name"], g["lr"]) for g in unet_only.param_groups(1e-4, 5e-5)] == [("unet", 1e-4)]

    _, _, te_only = attached(tiny, "sd15", train_unet=False)
    assert te_only.trains_text_encoders and all(n.startswith("lora_te_") for n in te_only.modules)

    _, _, both = attached(tiny, "sd15")
    assert [(g["name"], g["lr"]) for g in both.param_groups(1e-4, 5e-5)] == [("text_encoder", 5e-5), ("unet", 1e-4)]
    assert [(g["name"], g["lr"]) for g in both.param_groups(1e-4, None)] == [("text_encoder", 1e-4), ("unet", 1e-4)]
    assert [g["name"] for g in both.param_groups(1e-4, 0.0)] == ["unet"]
    with pytest.raises(ValueError, match="trains nothing"):
        LoRAConfig(train_unet=False, train_text_encoder=False)


def test_start_from_existing_lora_reproduces_it(tiny, tmp_path, caplog):
    model, clip, first = attached(tiny, "sd15", dim=4, alpha=2.0, conv_dim=2, conv_alpha=0.5)
    randomize(first)
    first.train(False)
    expected = unet_prediction(model.model.diffusion_model, tiny, "sd15")
    path = str(tmp_path / "start.safetensors")
    first.save(path, torch.float32, {})
    first.detach()

    # the file decides modules, ranks and alphas; the options' dim does not
    again = LoRAAdapter(LoRAConfig(dim=16, network_weights=path), model.model.model_config)
    again.attach(model.model.diffusion_model, text_encoders(clip, "sd15"))
    again.train(False)
    file_sd, _ = load_lora(path)
    sd = again.state_dict()
    assert sd.keys() == file_sd.keys() and all(torch.equal(sd[k], file_sd[k]) for k in sd)
    torch.testing.assert_close(unet_prediction(model.model.diffusion_model, tiny, "sd15"), expected)
    assert again.metadata()["ss_network_dim"] == "4"
    again.detach()

    caplog.set_level(logging.WARNING)
    unet_part = LoRAAdapter(LoRAConfig(network_weights=path, train_text_encoder=False), model.model.model_config)
    unet_part.attach(model.model.diffusion_model, {})
    assert all(n.startswith("lora_unet_") for n in unet_part.modules) and "left out" in caplog.text
    unet_part.detach()

    sdxl = tiny.build_model("sdxl")
    with pytest.raises(ValueError, match="start.safetensors: LoRA modules match no layer of this sdxl model"):
        LoRAAdapter(LoRAConfig(network_weights=path, train_text_encoder=False), sdxl.model.model_config) \
            .attach(sdxl.model.diffusion_model, {})


def test_load_state_dict_must_fit(tiny):
    _, _, adapter = attached(tiny, "sd15", train_text_encoder=False)
    sd = adapter.state_dict()
    name = next(iter(adapter.modules))
    with pytest.raises(ValueError, match="missing"):
        adapter.load_state_dict({k: v for k, v in sd.items() if not k.startswith(name + ".")})
    sd[f"{name}.lora_down.weight"] = torch.zeros(7, 3)
    with pytest.raises(ValueError, match=f"{name}: weights of shape"):
        adapter.load_state_dict(sd)


def test_sd_scripts_options(tiny):
    c = LoRAConfig.from_kohya("networks.lora", 8, 4, ["conv_dim=4", "conv_alpha=1", "down_lr_weight=sine+.5",
                                                      "rank_dropout=0.1"], network_dropout=0.1, network_train_unet_only=True)
    assert (c.dim, c.alpha, c.conv_dim, c.conv_alpha, c.down_lr_weight, c.rank_dropout, c.dropout) == (8, 4.0, 4, 1.0, "sine+.5", 0.1, 0.1)
    assert not c.train_text_encoder and c.network_module == "networks.lora"
    d = LoRAConfig.from_kohya("networks.dylora", 16, None, {"unit": "4"})
    assert d.unit == 4 and d.network_module == "networks.dylora" and d.network_args() == {"unit": "4"}
    with pytest.raises(ValueError, match="'loraplus_lr_ratio' is not supported"):
        LoRAConfig.from_kohya("networks.lora", 4, 1, ["loraplus_lr_ratio=16"])
    with pytest.raises(ValueError, match="conv_dim='x' is not a valid int"):
        LoRAConfig.from_kohya("networks.lora", 4, 1, ["conv_dim=x"])
    with pytest.raises(ValueError, match="unit must divide dim"):
        LoRAConfig(dim=6, unit=4)
    with pytest.raises(ValueError, match="supports SD1.5, SDXL and Anima"):
        LoRAAdapter(LoRAConfig(), object())
