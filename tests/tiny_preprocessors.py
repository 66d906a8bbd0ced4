"""Tiny random-weight preprocessor files in the public layouts (no downloads here).

Each writer builds the architecture at tiny widths where the architecture allows it and
saves it the way the public file is saved (e.g. PiDiNet's {"state_dict": {"module.*"}},
HED in fp16, Depth Anything V2 with the original repository's key names)."""
import re
from pathlib import Path

import torch

from lllite_kit.preprocessors.hed import ControlNetHED_Apache2
from lllite_kit.preprocessors.lineart_realistic import Generator
from lllite_kit.preprocessors.mlsd import MobileV2_MLSD_Large
from lllite_kit.preprocessors.pidinet import PiDiNet


def _seeded(seed: int):
    torch.manual_seed(seed)


def write_hed(path: Path, seed: int = 0) -> Path:
    _seeded(seed)
    net = ControlNetHED_Apache2(widths=(4, 8, 8, 8, 8))
    with torch.no_grad():
        net.norm.copy_(torch.tensor([120.0, 115.0, 105.0]).view(1, 3, 1, 1))
    torch.save({k: v.half() for k, v in net.state_dict().items()}, path)  # the public file is fp16
    return path


def write_pidinet(path: Path, seed: int = 0) -> Path:
    _seeded(seed)
    sd = PiDiNet(width=4, dilation=4).state_dict()
    torch.save({"epoch": 19, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


def write_mlsd(path: Path, seed: int = 0) -> Path:
    """M-LSD has fixed widths; the real-size network is only 1.5 M parameters."""
    _seeded(seed)
    torch.save(MobileV2_MLSD_Large().state_dict(), path)
    return path


def write_lineart(path: Path, seed: int = 0) -> Path:
    _seeded(seed)
    torch.save(Generator(width=4, residual_blocks=1).state_dict(), path)
    return path


def tiny_depth_anything(seed: int = 0, layers: int = 4, taps: tuple = (1, 2, 3, 4)):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    _seeded(seed)
    backbone = Dinov2Config(hidden_size=64, num_hidden_layers=layers, num_attention_heads=1, mlp_ratio=2, image_size=56,
                            patch_size=14, out_indices=list(taps), apply_layernorm=True, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=64, patch_size=14,
                                 neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8)
    net = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():  # layer scales start at 1 and the head at small values: make depth vary
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


# transformers key -> original Depth Anything key, following transformers' conversion script
_DA_RULES = [
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(\w+)", r"pretrained.patch_embed.proj.\1"),
    (r"backbone\.layernorm\.(\w+)", r"pretrained.norm.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm\d|mlp\.fc\d)\.(\w+)", r"pretrained.blocks.\1.\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.(o_proj|output\.dense)\.(\w+)", r"pretrained.blocks.\1.attn.proj.\3"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(\w+)", r"depth_head.projects.\1.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(\w+)", r"depth_head.resize_layers.\1.\2"),
    (r"neck\.convs\.(\d)\.weight", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.(\d)\.projection\.(\w+)",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv.{m[2]}"),
    (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.(\w+)",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
    (r"head\.conv1\.(\w+)", r"depth_head.scratch.output_conv1.\1"),
    (r"head\.conv2\.(\w+)", r"depth_head.scratch.output_conv2.0.\1"),
    (r"head\.conv3\.(\w+)", r"depth_head.scratch.output_conv2.2.\1"),
]
_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(q_proj|k_proj|v_proj|query|key|value)\.(\w+)")
_QKV_ORDER = {"q_proj": 0, "query": 0, "k_proj": 1, "key": 1, "v_proj": 2, "value": 2}


def to_original_depth_anything(sd: dict) -> dict:
    out, qkv = {}, {}
    for key, value in sd.items():
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m[1], m[3]), [None] * 3)[_QKV_ORDER[m[2]]] = value
            continue
        for pattern, repl in _DA_RULES:
            new, n = re.subn(f"^{pattern}$", repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"no rule for {key}")
    for (layer, part), parts in qkv.items():
        out[f"pretrained.blocks.{layer}.attn.qkv.{part}"] = torch.cat(parts, dim=0)
    return out


def write_depth_anything_original(path: Path, seed: int = 0) -> Path:
    torch.save(to_original_depth_anything(tiny_depth_anything(seed).state_dict()), path)
    return path


def write_depth_anything_folder(folder: Path, seed: int = 0) -> Path:
    tiny_depth_anything(seed).save_pretrained(folder)
    return folder


def tiny_midas(seed: int = 0):
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    _seeded(seed)
    bit = BitConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1], layer_type="bottleneck",
                    out_features=["stage1", "stage2", "stage3"], global_padding="SAME",
                    embedding_dynamic_padding=True, num_groups=4)
    config = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[1, 1, 1, 0.5],
                       backbone_featmap_shape=[1, 32, 4, 4], readout_type="project", use_auxiliary_head=False)
    return DPTForDepthEstimation(config).eval()


def write_midas_folder(folder: Path, seed: int = 0) -> Path:
    tiny_midas(seed).save_pretrained(folder)
    return folder


def write_lineart_anime(path: Path, seed: int = 0) -> Path:
    from lllite_kit.preprocessors.lineart_anime import UnetGenerator

    _seeded(seed)
    torch.save({f"module.{k}": v for k, v in UnetGenerator(width=2).state_dict().items()}, path)
    return path


def write_lineart_manga(path: Path, seed: int = 0) -> Path:
    from lllite_kit.preprocessors.lineart_manga import MangaLineNet

    _seeded(seed)
    net = MangaLineNet(width=2, head_width=2)
    with torch.no_grad():
        net.conv15.model[2].bias.fill_(128.0)  # mid-grey paper: a visible map, not the clamp's black
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def write_normal_bae(path: Path, seed: int = 0) -> Path:
    """scannet.pt's layout ({"model": DataParallel names}). BAE's EfficientNet-B5 has a fixed
    size (the loader reads no widths), so this is the real-size network, stored in fp16 to
    halve the bytes (the loader works in fp32 whatever the file holds)."""
    from lllite_kit.preprocessors.normal_bae import NormalBae

    _seeded(seed)
    sd = NormalBae().state_dict()
    torch.save({"model": {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    return path


def write_upernet_folder(folder: Path, seed: int = 0, classes: int = 150, size: tuple[int, int] = (64, 96)) -> Path:
    """A tiny UperNet (ConvNeXt) saved as openmmlab/upernet-convnext-* are: model plus image
    processor settings (here sized `size`, so tests can skip its resampling)."""
    from transformers import (ConvNextConfig, SegformerImageProcessor, UperNetConfig,
                              UperNetForSemanticSegmentation)

    _seeded(seed)
    backbone = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    net = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=16, num_labels=classes,
                                                       use_auxiliary_head=False)).eval()
    with torch.no_grad():  # layer scales start near 0: nudge so the classes vary over the picture
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    net.save_pretrained(folder)
    SegformerImageProcessor(do_resize=True, size={"height": size[0], "width": size[1]}, do_rescale=True,
                            do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                            do_reduce_labels=False).save_pretrained(folder)
    return folder


def write_all(preprocessors_dir: Path) -> None:
    """Every public file name the preprocessor nodes default to, tiny."""
    preprocessors_dir.mkdir(parents=True, exist_ok=True)
    write_hed(preprocessors_dir / "ControlNetHED.pth")
    write_pidinet(preprocessors_dir / "table5_pidinet.pth")
    write_mlsd(preprocessors_dir / "mlsd_large_512_fp32.pth")
    write_lineart(preprocessors_dir / "sk_model.pth")
    write_depth_anything_original(preprocessors_dir / "depth_anything_v2_vits.pth")
    write_midas_folder(preprocessors_dir / "dpt-hybrid-midas")
    write_lineart_anime(preprocessors_dir / "netG.pth")
    write_lineart_manga(preprocessors_dir / "erika.pth")
    write_upernet_folder(preprocessors_dir / "upernet-convnext-small")
