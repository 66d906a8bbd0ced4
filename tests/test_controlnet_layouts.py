"""The two file layouts of a trained ControlNet: sd-scripts' SDXL layout (what
sdxl_train_control_net.py writes: diffusers ControlNetModel names) is the SDXL default where core
reads it back, and a file in it loads in core's ControlNetLoader as the very same network;
lllyasviel's layout is used (auto) or asked for where core's diffusers detection would not know
the model; a real SD1.5 file in it has every tensor A1111's sd-webui-controlnet loads."""
import pytest
import torch
from safetensors import safe_open

import comfy.cldm.cldm
import comfy.model_detection
import comfy.ops
import nodes
from controlnet_testing import build_model
from lllite_kit.training.controlnet.layouts import (AUTO, LLLYASVIEL, SD_SCRIPTS, core_reads_sd_scripts, file_names,
                                                     resolve_layout)
from lllite_kit.training.controlnet.network import ControlNetError, controlnet_config, new_controlnet
from lllite_kit.training.controlnet.weights import read_controlnet, save_controlnet

_SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
         "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
         "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "use_linear_in_transformer": True, "num_head_channels": 64,
         "use_temporal_attention": False, "use_temporal_resblock": False}
# the real SDXL U-Net's config, and core's "SDXL_small_cnet": full width, no attention - the
# smallest SDXL architecture core's diffusers detection knows (155 M parameters)
SDXL = comfy.model_detection.convert_config({**_SDXL, "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
                                            "context_dim": 2048, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]})
SDXL_NO_ATTENTION = comfy.model_detection.convert_config({**_SDXL, "transformer_depth": [0] * 6, "transformer_depth_middle": 0,
                                                         "context_dim": 1, "transformer_depth_output": [0] * 9})
# names sd-scripts' SdxlControlNet.state_dict() gives (library/sdxl_original_control_net.py + sdxl_model_util's map)
SD_SCRIPTS_NAMES = ["conv_in.weight", "time_embedding.linear_2.bias", "add_embedding.linear_1.weight",
                    "down_blocks.0.resnets.1.conv2.weight", "down_blocks.1.downsamplers.0.conv.weight",
                    "down_blocks.1.resnets.0.conv_shortcut.weight", "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight",
                    "down_blocks.2.attentions.0.proj_in.weight", "mid_block.resnets.1.time_emb_proj.weight",
                    "mid_block.attentions.0.transformer_blocks.9.ff.net.2.bias", "controlnet_cond_embedding.conv_in.weight",
                    "controlnet_cond_embedding.blocks.5.bias", "controlnet_cond_embedding.conv_out.weight",
                    "controlnet_down_blocks.8.weight", "controlnet_mid_block.bias"]


def test_real_sdxl_gets_sd_scripts_names_and_a_tiny_one_lllyasviels():
    with torch.device("meta"):
        real = new_controlnet(SDXL, "meta")
    names = file_names(SD_SCRIPTS, real.state_dict(), SDXL)
    assert len(set(names.values())) == len(names)  # one file name per tensor
    assert set(SD_SCRIPTS_NAMES) <= set(names.values())
    assert not any(v.startswith(("control_model.", "class_embedding.", "input_blocks.", "zero_convs.")) for v in names.values())
    assert resolve_layout(AUTO, "sdxl", real, SDXL) == SD_SCRIPTS

    for family in ("sdxl", "sd15"):
        model = build_model(family)
        config = model.model.model_config.unet_config
        with torch.device("meta"):
            tiny = new_controlnet(config, "meta")
        assert not core_reads_sd_scripts(tiny, config) and resolve_layout(AUTO, family, tiny, config) == LLLYASVIEL
        with pytest.raises(ControlNetError, match="lllyasviel layout"):
            resolve_layout(SD_SCRIPTS, family, tiny, config)


def test_an_sd_scripts_layout_file_loads_in_core_as_the_same_network(comfy_dirs):
    net = comfy.cldm.cldm.ControlNet(**controlnet_config(SDXL_NO_ATTENTION), dtype=torch.float16, device=torch.device("cpu"),
                                     operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    assert resolve_layout(AUTO, "sdxl", net, SDXL_NO_ATTENTION) == SD_SCRIPTS
    path = comfy_dirs / "models" / "controlnet" / "sd_scripts_layout.safetensors"
    ours = net.state_dict()
    save_controlnet(str(path), net, torch.float16, {"modelspec.architecture": "stable-diffusion-xl-v1-base/controlnet"},
                    file_names(SD_SCRIPTS, ours, SDXL_NO_ATTENTION))
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert {"controlnet_mid_block.weight", "controlnet_down_blocks.8.bias", "add_embedding.linear_2.weight"} <= keys
    assert not any(k.startswith(("control_model.", "zero_convs.", "input_blocks.")) for k in keys)
    del net

    loaded = nodes.ControlNetLoader().load_controlnet(path.name)[0].control_model.state_dict()
    assert set(loaded) == set(ours)
    assert all(torch.equal(loaded[k].to(v.dtype), v) for k, v in ours.items())
    start = read_controlnet(str(path))  # what Train ControlNet's start_from reads to continue training
    assert set(start) == set(ours) and all(torch.equal(start[k].to(v.dtype), v) for k, v in ours.items())


# lllyasviel's v1-inference.yaml (the SD1.5 U-Net), and sd-webui-controlnet's controlnet_default_config
# (scripts/controlnet_model_guess.py), both in ldm's form (attention_resolutions, per-level depth)
SD15_YAML = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
             "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8, "use_spatial_transformer": True,
             "transformer_depth": 1, "context_dim": 768, "use_checkpoint": False, "legacy": False}
A1111_SD15 = {"adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": 2,
              "attention_resolutions": [1, 2, 4], "transformer_depth": [1, 1, 1, 0], "channel_mult": [1, 2, 4, 4],
              "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8}


def test_an_sd15_file_is_what_a1111s_sd_webui_controlnet_loads():
    """sd-webui-controlnet's build_model_by_guess on our SD1.5 file: it strips `control_model.`,
    takes the SD1.5 config (input_hint_block.0.weight, no label_emb.0.0.bias), reads hint channels
    and context_dim from two tensors, and loads with strict=False (a missing tensor would stay
    random): every tensor of its ControlNet must be in the file with its shape, nothing else."""
    config = comfy.model_detection.convert_config(SD15_YAML)
    with torch.device("meta"):
        ours = new_controlnet(config, "meta").state_dict()
    names = file_names(LLLYASVIEL, ours, config)
    assert resolve_layout(AUTO, "sd15", None, config) == LLLYASVIEL
    assert all(n.startswith("control_model.") for n in names.values())
    sd = {names[k].replace("control_model.", ""): tuple(v.shape) for k, v in ours.items()}
    assert "input_hint_block.0.weight" in sd and "label_emb.0.0.bias" not in sd  # its SD1.5 branch
    hint_channels, context_dim = sd["input_hint_block.0.weight"][1], sd["input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"][1]
    assert (hint_channels, context_dim) == (3, 768)
    a1111 = comfy.model_detection.convert_config({**A1111_SD15, "hint_channels": hint_channels, "context_dim": context_dim,
                                                  "image_size": 32, "use_spatial_transformer": True, "legacy": False})
    with torch.device("meta"):
        theirs = comfy.cldm.cldm.ControlNet(**a1111, device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == sd
    # lllyasviel's control_sd15_*.pth tensors, as A1111 reads them
    assert sd["input_hint_block.14.weight"] == (320, 256, 3, 3) and sd["zero_convs.11.0.weight"] == (1280, 1280, 1, 1)
    assert sd["input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1) and sd["middle_block_out.0.weight"] == (1280, 1280, 1, 1)
