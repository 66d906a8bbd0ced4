"""Where preprocessor weights come from: the catalogue of public files, finding the one a
node names in our "preprocessors" model folder, and the errors users see when it is
missing or is not the architecture expected. The pack never downloads anything.
"""
import os
from dataclasses import dataclass

import torch

from ..errors import user_error

WEIGHT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".onnx")
FOLDER_MARKER = "config.json"  # a transformers model folder (save_pretrained layout)


@dataclass(frozen=True)
class WeightSpec:
    name: str            # file (or folder) name inside models/preprocessors
    url: str             # where the public file is published
    architecture: str    # what the loader expects, named in wrong-layout errors
    licence: str


_ANNOTATORS = "https://huggingface.co/lllyasviel/Annotators/resolve/main/"

HED = WeightSpec("ControlNetHED.pth", _ANNOTATORS + "ControlNetHED.pth",
                 "ControlNetHED_Apache2 (lllyasviel's ControlNet 1.1 HED soft edge)", "Apache-2.0")
PIDINET = WeightSpec("table5_pidinet.pth", _ANNOTATORS + "table5_pidinet.pth",
                     "PiDiNet (table5, carv4 with CDCM/CSAM, as in ControlNet 1.1)",
                     "PiDiNet licence: non-commercial research use")
MLSD = WeightSpec("mlsd_large_512_fp32.pth", _ANNOTATORS + "mlsd_large_512_fp32.pth",
                  "MobileV2_MLSD_Large (M-LSD large, as in ControlNet)", "Apache-2.0")
LINEART = WeightSpec("sk_model.pth", _ANNOTATORS + "sk_model.pth",
                     "informative-drawings Generator (realistic lineart)", "MIT")
LINEART_COARSE = WeightSpec("sk_model2.pth", _ANNOTATORS + "sk_model2.pth",
                            "informative-drawings Generator (realistic lineart)", "MIT")
DEPTH_ANYTHING_V2_SMALL = WeightSpec(
    "depth_anything_v2_vits.pth",
    "https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth",
    "Depth Anything V2 (DINOv2 + DPT head; original .pth or a transformers folder)", "Apache-2.0")
DEPTH_ANYTHING_V2_BASE = WeightSpec(
    "depth_anything_v2_vitb.pth",
    "https://huggingface.co/depth-anything/Depth-Anything-V2-Base/resolve/main/depth_anything_v2_vitb.pth",
    DEPTH_ANYTHING_V2_SMALL.architecture, "CC-BY-NC-4.0")
DEPTH_ANYTHING_V2_LARGE = WeightSpec(
    "depth_anything_v2_vitl.pth",
    "https://huggingface.co/depth-anything/Depth-Anything-V2-Large/resolve/main/depth_anything_v2_vitl.pth",
    DEPTH_ANYTHING_V2_SMALL.architecture, "CC-BY-NC-4.0")
DEPTH_ANYTHING_V2_SMALL_HF = WeightSpec(
    "Depth-Anything-V2-Small-hf", "https://huggingface.co/depth-anything/Depth-Anything-V2-Small-hf",
    DEPTH_ANYTHING_V2_SMALL.architecture, "Apache-2.0")
# V1 (LiheYoung/Depth-Anything): the same file layout as V2; the loader tells them apart by name
_DEPTH_ANYTHING_V1 = "https://huggingface.co/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/"
DEPTH_ANYTHING_V1_SMALL = WeightSpec("depth_anything_vits14.pth", _DEPTH_ANYTHING_V1 + "depth_anything_vits14.pth",
                                     DEPTH_ANYTHING_V2_SMALL.architecture, "Apache-2.0")
DEPTH_ANYTHING_V1_BASE = WeightSpec("depth_anything_vitb14.pth", _DEPTH_ANYTHING_V1 + "depth_anything_vitb14.pth",
                                    DEPTH_ANYTHING_V2_SMALL.architecture, "Apache-2.0")
DEPTH_ANYTHING_V1_LARGE = WeightSpec("depth_anything_vitl14.pth", _DEPTH_ANYTHING_V1 + "depth_anything_vitl14.pth",
                                     DEPTH_ANYTHING_V2_SMALL.architecture, "Apache-2.0")
MIDAS_DPT_HYBRID = WeightSpec(
    "dpt-hybrid-midas", "https://huggingface.co/Intel/dpt-hybrid-midas",
    "MiDaS DPT-Hybrid (transformers DPTForDepthEstimation folder: config.json + model.safetensors)",
    "Apache-2.0 (model card; MiDaS code MIT)")
MIDAS_DPT_HYBRID_ORIGINAL = WeightSpec(
    "dpt_hybrid-midas-501f0c75.pt", _ANNOTATORS + "dpt_hybrid-midas-501f0c75.pt",
    "MiDaS DPT-Hybrid or DPT-Large (the original MiDaS v3 .pt, as ControlNet's depth annotator reads it)", "MIT")
MIDAS_DPT_LARGE_ORIGINAL = WeightSpec(
    "dpt_large-midas-2f21e586.pt", "https://github.com/isl-org/DPT/releases/download/1_0/dpt_large-midas-2f21e586.pt",
    MIDAS_DPT_HYBRID_ORIGINAL.architecture, "MIT")

_OPENPOSE_LICENCE = "CMU OpenPose licence: non-commercial research use"
OPENPOSE_BODY = WeightSpec("body_pose_model.pth", _ANNOTATORS + "body_pose_model.pth",
                           "OpenPose body (18 keypoints, CPM with part affinity fields)", _OPENPOSE_LICENCE)
OPENPOSE_HAND = WeightSpec("hand_pose_model.pth", _ANNOTATORS + "hand_pose_model.pth",
                           "OpenPose hand (21 keypoints, CPM)", _OPENPOSE_LICENCE)
OPENPOSE_FACE = WeightSpec("facenet.pth", _ANNOTATORS + "facenet.pth",
                           "OpenPose face (70 keypoints, CPM)", _OPENPOSE_LICENCE)
_DWPOSE = "https://huggingface.co/yzd-v/DWPose/resolve/main/"
DWPOSE_DETECTOR = WeightSpec("yolox_l.onnx", _DWPOSE + "yolox_l.onnx",
                             "YOLOX person detector (ONNX graph, or its .torchscript.pt)", "Apache-2.0")
DWPOSE_ESTIMATOR = WeightSpec("dw-ll_ucoco_384.onnx", _DWPOSE + "dw-ll_ucoco_384.onnx",
                              "DWPose RTMPose-l whole body, 133 keypoints (ONNX graph, or its .torchscript.pt)",
                              "Apache-2.0")
POSE_WEIGHTS = (OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE, DWPOSE_DETECTOR, DWPOSE_ESTIMATOR)

UPERNET_CONVNEXT_SMALL = WeightSpec(
    "upernet-convnext-small", "https://huggingface.co/openmmlab/upernet-convnext-small",
    "UperNet ADE20K segmentation (transformers UperNetForSemanticSegmentation folder: config.json + "
    "model.safetensors, 150 classes)", "MIT")
UPERNET_CONVNEXT_LARGE = WeightSpec(
    "upernet-convnext-large", "https://huggingface.co/openmmlab/upernet-convnext-large",
    UPERNET_CONVNEXT_SMALL.architecture, "MIT")
LINEART_ANIME = WeightSpec("netG.pth", _ANNOTATORS + "netG.pth",
                           "UnetGenerator (ControlNet 1.1 lineart_anime: 8 levels, 64 wide)", "MIT (ControlNet 1.1 annotator)")
ONEFORMER_ADE20K_SWIN_LARGE = WeightSpec(
    "oneformer_ade20k_swin_large", "https://huggingface.co/shi-labs/oneformer_ade20k_swin_large",
    "OneFormer ADE20K segmentation (transformers OneFormerForUniversalSegmentation folder: config.json, weights, "
    "tokenizer files; 150 classes)", "MIT")
ONEFORMER_ADE20K_SWIN_TINY = WeightSpec(
    "oneformer_ade20k_swin_tiny", "https://huggingface.co/shi-labs/oneformer_ade20k_swin_tiny",
    ONEFORMER_ADE20K_SWIN_LARGE.architecture, "MIT")
NORMAL_BAE = WeightSpec("scannet.pt", _ANNOTATORS + "scannet.pt",
                        "BAE surface normals (EfficientNet-B5 encoder + uncertainty-guided decoder, ControlNet 1.1 "
                        "normalbae)", "MIT")
LINEART_MANGA = WeightSpec("erika.pth", _ANNOTATORS + "erika.pth",
                           "MangaLineExtraction res_skip network (ControlNet 1.1 manga_line annotator)",
                           "MIT (MangaLineExtraction_PyTorch)")
SECOND_WAVE_WEIGHTS = (UPERNET_CONVNEXT_SMALL, UPERNET_CONVNEXT_LARGE, LINEART_ANIME, LINEART_MANGA, NORMAL_BAE,
                       ONEFORMER_ADE20K_SWIN_LARGE, ONEFORMER_ADE20K_SWIN_TINY)

CATALOGUE = (HED, PIDINET, MLSD, LINEART, LINEART_COARSE, DEPTH_ANYTHING_V2_SMALL, DEPTH_ANYTHING_V2_BASE,
             DEPTH_ANYTHING_V2_LARGE, DEPTH_ANYTHING_V2_SMALL_HF, DEPTH_ANYTHING_V1_SMALL, DEPTH_ANYTHING_V1_BASE,
             DEPTH_ANYTHING_V1_LARGE, MIDAS_DPT_HYBRID, MIDAS_DPT_HYBRID_ORIGINAL,
             MIDAS_DPT_LARGE_ORIGINAL, *POSE_WEIGHTS, *SECOND_WAVE_WEIGHTS)


@user_error
class WeightFileMissing(FileNotFoundError):
    pass


@user_error
class WrongWeightLayout(ValueError):
    pass


def available_weights(dirs: list[str]) -> list[str]:
    """Weight files and transformers model folders in `dirs`, as names relative to them."""
    found = set()
    for root in dirs:
        if not os.path.isdir(root):
            continue
        for here, subdirs, files in os.walk(root, followlinks=True):
            rel = os.path.relpath(here, root).replace(os.sep, "/")
            if FOLDER_MARKER in files and rel != ".":
                found.add(rel)
                subdirs.clear()  # the files inside a model folder are not choices of their own
                continue
            prefix = "" if rel == "." else rel + "/"
            found.update(prefix + f for f in files if f.lower().endswith(WEIGHT_EXTENSIONS))
    return sorted(found)


# An absent public file is still offered, labelled so the list says what to do before a run.
_MISSING = " (missing: put it in models/preprocessors)"


def missing_label(name: str) -> str:
    return name + _MISSING


def name_from_choice(choice: str) -> str:
    """The file name behind a choice, with or without the missing label."""
    return choice.removesuffix(_MISSING)


def weight_choices(defaults: list[WeightSpec], dirs: list[str]) -> list[str]:
    """The node's choices: its public files first (absent ones labelled as missing, so the
    list says where they go), then every other file found."""
    found = available_weights(dirs)
    names = [s.name if s.name in found else missing_label(s.name) for s in defaults]
    claimed = {s.name for s in CATALOGUE}
    return names + [n for n in found if n not in claimed]


def locate(name: str, dirs: list[str]) -> str:
    """Full path of `name` in the first of `dirs` that has it, else WeightFileMissing saying
    where it belongs and where it is published."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise WeightFileMissing(f"'{name}' is not a name inside the preprocessors model folder")
    for root in dirs:
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    folder = dirs[0] if dirs else "ComfyUI/models/preprocessors"
    spec = next((s for s in CATALOGUE if s.name == name), None)
    where = (f" It is published at {spec.url}" + (" (download the whole folder)." if _is_folder_spec(spec) else ".")
             if spec else "")
    raise WeightFileMissing(f"Preprocessor weights '{name}' not found: put it in {folder} "
                            f"(ComfyUI's models/preprocessors folder).{where} Nothing is downloaded automatically.")


def _is_folder_spec(spec: WeightSpec) -> bool:
    return not spec.name.lower().endswith(WEIGHT_EXTENSIONS)


def file_version(path: str) -> tuple:
    """Changes when the file (or any file of a model folder) is replaced: the cache key."""
    if os.path.isdir(path):
        stats = [os.stat(os.path.join(here, f)) for here, _, files in os.walk(path) for f in files]
        return tuple(sorted((s.st_mtime_ns, s.st_size) for s in stats))
    s = os.stat(path)
    return (s.st_mtime_ns, s.st_size)


def read_state_dict(path: str, architecture: str) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.safetensors file, "module." prefixes (DataParallel) removed.
    Files that hold a {"state_dict": ...} or {"model": ...} checkpoint are unwrapped."""
    import comfy.utils

    if os.path.isdir(path):
        raise WrongWeightLayout(f"{path} is a folder; {architecture} is read from a single weight file")
    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:
        raise WrongWeightLayout(f"{path} could not be read as a weight file for {architecture}: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # a training checkpoint (BAE's scannet.pt)
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WrongWeightLayout(f"{path} does not hold a state dict of tensors; expected {architecture}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def require_keys(sd: dict, keys: list[str], architecture: str, path: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise WrongWeightLayout(f"{os.path.basename(path)} is not a {architecture} weight file: "
                                f"it lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                                f"(it has e.g. {', '.join(list(sd)[:3])})")


def load_exact(module: torch.nn.Module, sd: dict, architecture: str, path: str, assign: bool = False) -> torch.nn.Module:
    """load_state_dict(strict) with the mismatch reported as the wrong architecture; assign=True
    takes the file's tensors as they are (for a module built on the meta device)."""
    try:
        module.load_state_dict(sd, strict=True, assign=assign)
    except RuntimeError as e:
        detail = str(e).split("\n\t", 1)[-1][:400]
        raise WrongWeightLayout(f"{os.path.basename(path)} does not match {architecture}: {detail}") from e
    return module
