"""Depth Anything V1 and V2 through transformers' DepthAnythingForDepthEstimation. Two forms
load: the original release files (depth_anything_v2_vits/vitb/vitl.pth; V1's
depth_anything_vits14/vitb14/vitl14.pth), whose keys are renamed to transformers' layout as
transformers' own conversion script does, and a transformers folder (config.json + weights,
e.g. Depth-Anything-V2-Small-hf), read with local_files_only.

V1 and V2 files have the same keys and shapes; they differ in which encoder layers feed
the depth head (V1: the last four, as its get_intermediate_layers(x, 4) call takes; V2: its
intermediate_layer_idx table). So the version comes from the user's choice, else from the
file name the publishers gave it, else from a folder's config; a file that names neither
is refused with the choice to make, never guessed."""
import math
import os
import re

import torch

from .depth import IMAGENET_MEAN, IMAGENET_STD, TransformersDepth, load_transformers_folder, normalise_per_image
from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .weights import DEPTH_ANYTHING_V2_SMALL, WrongWeightLayout, load_exact, read_state_dict, require_keys

ARCH = DEPTH_ANYTHING_V2_SMALL.architecture
MULTIPLE = 14        # DINOv2 patch size
NATIVE_RESOLUTION = 518
_HEAD_DIM = 64       # DINOv2 attention heads are 64 wide at every size
# Encoder layers (1-based) whose outputs feed the DPT head in V2, by depth of the encoder;
# other depths (e.g. tiny test models) take the last layer of each quarter.
_V2_TAPS = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}
VERSIONS = ("auto", "V1", "V2")
_V1_NAME = re.compile(r"depth[_-]anything[_-](vit[sbl]14|(small|base|large)-hf)")
# transformers has named the attention projections two ways; the installed one decides
_ATTENTION_NAMES = (("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
                    ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"))


def encoder_taps(version: str, layers: int) -> list[int]:
    """1-based encoder layers whose outputs feed the DPT head."""
    if version == "V1":
        return list(range(layers - 3, layers + 1))
    return _V2_TAPS.get(layers, [max(1, layers * q // 4) for q in (1, 2, 3, 4)])


def version_of(path: str, choice: str = "auto") -> str:
    """V1 or V2 for an original file: the user's choice, else what its published name says."""
    if choice not in VERSIONS:
        raise ValueError(f"Depth Anything version must be one of {', '.join(VERSIONS)}, not {choice!r}")
    if choice != "auto":
        return choice
    name = os.path.basename(os.path.normpath(path)).lower()
    if "v2" in name:
        return "V2"
    if _V1_NAME.search(name):
        return "V1"
    raise WrongWeightLayout(
        f"{os.path.basename(path)}: V1 and V2 Depth Anything files have the same layout and its name says neither "
        "(published names: depth_anything_vitl14.pth for V1, depth_anything_v2_vitl.pth for V2). "
        "Set the node's version to V1 or V2.")


def _config_from_original(sd: dict, version: str):
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = sd["pretrained.cls_token"].shape[-1]
    patch = sd["pretrained.patch_embed.proj.weight"].shape[-1]
    layers = sum(1 for k in sd if k.startswith("pretrained.blocks.") and k.endswith(".norm1.weight"))
    grid = math.isqrt(sd["pretrained.pos_embed"].shape[1] - 1)
    taps = encoder_taps(version, layers)
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // _HEAD_DIM),
                            mlp_ratio=sd["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden,
                            image_size=grid * patch, patch_size=patch, out_indices=taps,
                            apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=patch,
                               neck_hidden_sizes=[sd[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
                               fusion_hidden_size=sd["depth_head.scratch.layer1_rn.weight"].shape[0],
                               head_hidden_size=sd["depth_head.scratch.output_conv2.0.weight"].shape[0],
                               depth_estimation_type="relative")


def original_to_transformers(sd: dict, layers: int, target_keys: set[str]) -> dict:
    """Rename an original Depth Anything state dict to transformers' keys; the fused qkv
    projection is split into query, key and value."""
    q, k, v, o = next(n for n in _ATTENTION_NAMES if f"backbone.encoder.layer.0.{n[0]}.weight" in target_keys)
    out = {
        "backbone.embeddings.cls_token": sd["pretrained.cls_token"],
        "backbone.embeddings.mask_token": sd["pretrained.mask_token"],
        "backbone.embeddings.position_embeddings": sd["pretrained.pos_embed"],
        "backbone.embeddings.patch_embeddings.projection.weight": sd["pretrained.patch_embed.proj.weight"],
        "backbone.embeddings.patch_embeddings.projection.bias": sd["pretrained.patch_embed.proj.bias"],
        "backbone.layernorm.weight": sd["pretrained.norm.weight"],
        "backbone.layernorm.bias": sd["pretrained.norm.bias"],
    }
    for i in range(layers):
        src, dst = f"pretrained.blocks.{i}.", f"backbone.encoder.layer.{i}."
        for a, b in (("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
                     ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
                     ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
                     ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
                     ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
                     ("attn.proj.weight", f"{o}.weight"), ("attn.proj.bias", f"{o}.bias")):
            out[dst + b] = sd[src + a]
        for part in ("weight", "bias"):
            for name, chunk in zip((q, k, v), sd[f"{src}attn.qkv.{part}"].chunk(3, dim=0)):
                out[f"{dst}{name}.{part}"] = chunk
    head = "depth_head."
    for i in range(4):
        out[f"neck.reassemble_stage.layers.{i}.projection.weight"] = sd[f"{head}projects.{i}.weight"]
        out[f"neck.reassemble_stage.layers.{i}.projection.bias"] = sd[f"{head}projects.{i}.bias"]
        if i != 2:  # the third stage keeps its resolution and has no resize layer
            out[f"neck.reassemble_stage.layers.{i}.resize.weight"] = sd[f"{head}resize_layers.{i}.weight"]
            out[f"neck.reassemble_stage.layers.{i}.resize.bias"] = sd[f"{head}resize_layers.{i}.bias"]
        out[f"neck.convs.{i}.weight"] = sd[f"{head}scratch.layer{i + 1}_rn.weight"]
    for i in range(1, 5):  # refinenet4 is the first fusion layer in transformers
        src, dst = f"{head}scratch.refinenet{i}.", f"neck.fusion_stage.layers.{4 - i}."
        for part in ("weight", "bias"):
            out[f"{dst}projection.{part}"] = sd[f"{src}out_conv.{part}"]
            for unit in (1, 2):
                for conv in (1, 2):
                    out[f"{dst}residual_layer{unit}.convolution{conv}.{part}"] = \
                        sd[f"{src}resConfUnit{unit}.conv{conv}.{part}"]
    for a, b in (("output_conv1", "conv1"), ("output_conv2.0", "conv2"), ("output_conv2.2", "conv3")):
        out[f"head.{b}.weight"] = sd[f"{head}scratch.{a}.weight"]
        out[f"head.{b}.bias"] = sd[f"{head}scratch.{a}.bias"]
    return out


def _check_folder_version(net, path: str, choice: str) -> None:
    """A folder's config names its taps; an explicit version must agree with them."""
    if choice == "auto":
        return
    layers = net.config.backbone_config.num_hidden_layers
    if list(net.config.backbone_config.out_indices) != encoder_taps(choice, layers):
        raise WrongWeightLayout(
            f"{os.path.basename(path)}'s config.json feeds encoder layers {list(net.config.backbone_config.out_indices)} "
            f"to the depth head, which is not Depth Anything {choice} (layers {encoder_taps(choice, layers)}). "
            "Set the version to auto: a folder's config says which it is.")


def build_depth_anything(path: str, version: str = "auto") -> TransformersDepth:
    from transformers import DepthAnythingForDepthEstimation

    if os.path.isdir(path):
        net, processor = load_transformers_folder(path, "depth_anything", DepthAnythingForDepthEstimation, ARCH)
        _check_folder_version(net, path, version)
        return TransformersDepth(net, processor.get("image_mean", IMAGENET_MEAN), processor.get("image_std", IMAGENET_STD))
    sd = read_state_dict(path, ARCH)
    require_keys(sd, ["pretrained.cls_token", "pretrained.pos_embed", "pretrained.blocks.0.attn.qkv.weight",
                      "depth_head.projects.0.weight", "depth_head.scratch.layer1_rn.weight"], ARCH, path)
    version = version_of(path, version)
    net = DepthAnythingForDepthEstimation(_config_from_original(sd, version))
    layers = net.config.backbone_config.num_hidden_layers
    try:
        converted = original_to_transformers(sd, layers, set(net.state_dict()))
    except KeyError as e:
        raise WrongWeightLayout(f"{os.path.basename(path)} does not match {ARCH}: no {e}") from e
    return TransformersDepth(load_exact(net, converted, ARCH, path))


def load_depth_anything(path: str, version: str = "auto"):
    # "auto" always resolves the same way for one path, so the choice itself keys the cache
    return load_cached(path, lambda p: build_depth_anything(p, version), variant=version)


def depth_anything(patcher, images: torch.Tensor, detect_resolution: int = NATIVE_RESOLUTION) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) relative depth guide (near = 1) at the images' size."""
    def detect(net, chunk):
        return detect_then_restore(lambda x: normalise_per_image(net(x)), to_rgb(chunk), detect_resolution, MULTIPLE)

    return run_in_chunks(patcher, images, detect)
