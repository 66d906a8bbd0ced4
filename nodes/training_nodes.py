"""Training nodes: datasets (folder tree, sd-scripts TOML, in-graph images) and LoRA training.
The train node is a form over training.config.TrainConfig; everything it does is
training.session.train_lora, the same call the command line makes."""
import logging
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..training.comfy_bridge import default_output_dir, latent_cache_dir, model_source_name
from ..training.config import apply_dataset_options, config_from_dict
from ..training.data.config import DatasetConfig, SubsetConfig, load_dataset_toml
from ..training.data.errors import DatasetError
from ..training.data.folders import subsets_from_folder_tree
from ..training.data.lists import items_from_tensors
from ..training.engine import TrainHooks
from ..training.loss_curve import draw_loss_curve
from ..training.samples import SD_SCRIPTS_SAMPLERS
from ..training.schedulers import SCHEDULERS
from ..training.session import train_lora
from .common import image_to_bchw
from .training_run import if_exists_input, plan_run, resolve_path

log = logging.getLogger(__name__)

CATEGORY = "LLLite Kit/training"
Dataset = io.Custom("LLLITEKIT_DATASET")

# the common ones; any other (DAdaptLion, torch.optim.RMSprop, module.Class) via extra_options
OPTIMIZERS = ["AdamW", "AdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "SGDNesterov8bit", "Prodigy", "DAdaptAdam", "AdaFactor"]


def _bucket_options(resolution: int, batch_size: int, enable_bucket: bool) -> dict:
    return {"resolution": (resolution, resolution), "batch_size": batch_size, "enable_bucket": enable_bucket,
            "min_bucket_reso": min(256, resolution), "max_bucket_reso": max(1024, resolution),
            "bucket_reso_steps": 64 if resolution % 64 == 0 else 8}


def _common_inputs():
    return [
        io.Int.Input("resolution", default=1024, min=64, max=4096, step=8, tooltip="Training resolution (side of the square area)."),
        io.Int.Input("batch_size", default=1, min=1, max=64),
        io.Boolean.Input("enable_bucket", default=True, tooltip="Aspect-ratio bucketing: each image trains at the closest aspect bucket."),
    ]


class DatasetFromFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DatasetFromFolder",
            display_name="Training Dataset from Folder (LLLite Kit)",
            category=CATEGORY,
            description="An sd-scripts folder tree: train_dir/<repeats>_<identifier> <class>/ with images and optional "
                        "caption files; reg_dir/<repeats>_<class>/ with regularization images.",
            inputs=[
                io.String.Input("train_dir", default="training/my_subject", tooltip="Relative paths are read from ComfyUI's input folder."),
                io.String.Input("reg_dir", default="", tooltip="Optional regularization tree."),
                io.String.Input("caption_extension", default=".txt", tooltip="sd-scripts' default is .caption."),
                *_common_inputs(),
                io.Boolean.Input("flip_aug", default=False),
                io.Boolean.Input("shuffle_caption", default=False),
                io.Int.Input("keep_tokens", default=0, min=0, max=64),
                io.Float.Input("caption_dropout_rate", default=0.0, min=0.0, max=1.0, step=0.01),
                io.String.Input("conditioning_dir", default="", optional=True,
                                tooltip="Guide images for LLLite/ControlNet: a tree mirroring train_dir, each guide "
                                        "named like its image (conditioning_dir/10_sks dog/a.png for train_dir/10_sks dog/a.png)."),
            ],
            outputs=[Dataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, train_dir, reg_dir, caption_extension, resolution, batch_size, enable_bucket, flip_aug,
                shuffle_caption, keep_tokens, caption_dropout_rate, conditioning_dir="") -> io.NodeOutput:
        template = SubsetConfig(caption_extension=caption_extension, flip_aug=flip_aug, shuffle_caption=shuffle_caption,
                                keep_tokens=keep_tokens, caption_dropout_rate=caption_dropout_rate)
        subsets = subsets_from_folder_tree(resolve_path(train_dir, "train_dir"),
                                           resolve_path(reg_dir, "reg_dir") if reg_dir.strip() else None, template,
                                           resolve_path(conditioning_dir, "conditioning_dir") if conditioning_dir.strip() else None)
        return io.NodeOutput([DatasetConfig(subsets=subsets, **_bucket_options(resolution, batch_size, enable_bucket))])


class DatasetFromToml(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DatasetFromToml",
            display_name="Training Dataset from TOML (LLLite Kit)",
            category=CATEGORY,
            description="An sd-scripts dataset config ([general] / [[datasets]] / [[datasets.subsets]]). Paths inside "
                        "it are relative to the TOML; resolution and batch_size here apply where the TOML sets none.",
            inputs=[io.String.Input("toml_path", default="training/dataset.toml"), *_common_inputs()],
            outputs=[Dataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, toml_path, resolution, batch_size, enable_bucket) -> io.NodeOutput:
        fallback = {"resolution": resolution, "batch_size": batch_size, "enable_bucket": enable_bucket}
        return io.NodeOutput(load_dataset_toml(resolve_path(toml_path, "dataset TOML"), fallback=fallback))


class DatasetFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DatasetFromImages",
            display_name="Training Dataset from Images (LLLite Kit)",
            category=CATEGORY,
            description="Images made in the graph (a batch) with captions: one line per image, or one line for all. "
                        "Optional guide images (one per image) for LLLite/ControlNet training.",
            inputs=[
                io.Image.Input("images"),
                io.String.Input("captions", multiline=True, default=""),
                io.Int.Input("num_repeats", default=1, min=1, max=1000),
                *_common_inputs(),
                io.Boolean.Input("flip_aug", default=False),
                io.Image.Input("guides", optional=True),
            ],
            outputs=[Dataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, images, captions, num_repeats, resolution, batch_size, enable_bucket, flip_aug, guides=None) -> io.NodeOutput:
        lines = [line.strip() for line in captions.splitlines() if line.strip()] or [""]
        items = items_from_tensors(image_to_bchw(images).cpu(), lines, None if guides is None else image_to_bchw(guides).cpu())
        subset = SubsetConfig(items=items, num_repeats=num_repeats, flip_aug=flip_aug)
        return io.NodeOutput([DatasetConfig(subsets=[subset], **_bucket_options(resolution, batch_size, enable_bucket))])


def _images_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """IMAGEs of possibly different sizes -> one batch, each padded (black) to the largest."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    out = torch.zeros(len(images), h, w, 3)
    for k, img in enumerate(images):
        out[k, : img.shape[1], : img.shape[2]] = img[0]
    return out


def _preview(images: list[torch.Tensor]):
    from PIL import Image

    grid = _images_batch(images).movedim(0, 1).reshape(max(i.shape[1] for i in images), -1, 3)  # side by side
    return ("JPEG", Image.fromarray((grid.clamp(0, 1) * 255).byte().numpy()), 512)


def _extra_options(text: str, dataset: list, node: str) -> tuple[dict, list]:
    """extra_options TOML -> (training options, the dataset with the dataset options in it applied)."""
    try:
        options = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"extra_options must be TOML lines like `lr_scheduler_num_cycles = 3`: {e}") from e
    return apply_dataset_options(dataset, options, node)


def _lora_name(path: Path) -> str:
    """The name LoraLoader lists for `path` (relative to a loras folder)."""
    import folder_paths

    for root in folder_paths.get_folder_paths("loras"):
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    log.warning("%s is outside ComfyUI's loras folders: LoraLoader will not list it", path)
    return str(path)


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainLoRA",
            display_name="Train LoRA (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Trains a kohya-format LoRA into ComfyUI's loras folder (readable by LoraLoader, A1111, "
                        "sd-scripts). Saves every N steps with a resumable state; Cancel keeps the last saved file.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Vae.Input("vae"),
                Dataset.Input("dataset"),
                io.String.Input("output_name", default="my_lora", tooltip="File name in the loras folder, without extension."),
                io.Int.Input("max_train_steps", default=1600, min=1, max=1000000),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=10.0, step=1e-6, round=1e-8),
                io.Int.Input("network_dim", default=16, min=1, max=1024, tooltip="LoRA rank."),
                io.Float.Input("network_alpha", default=8.0, min=0.0, max=1024.0, step=0.5, tooltip="Scale = alpha / dim."),
                io.Int.Input("conv_dim", default=0, min=0, max=1024, tooltip="> 0: LoRA-C3Lier, 3x3 convs too."),
                io.Boolean.Input("train_text_encoder", default=False),
                io.Float.Input("text_encoder_lr", default=5e-5, min=0.0, max=10.0, step=1e-6, round=1e-8),
                io.Combo.Input("optimizer_type", options=OPTIMIZERS, default="AdamW",
                               tooltip="8bit: bitsandbytes; Prodigy: prodigyopt; DAdaptAdam: dadaptation (installed separately)."),
                io.String.Input("optimizer_args", default="", tooltip="key=value pairs, e.g. weight_decay=0.01 betas=0.9,0.999"),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULERS[:-1]), default="constant"),
                io.Int.Input("lr_warmup_steps", default=0, min=0, max=1000000),
                io.Combo.Input("mixed_precision", options=["bf16", "fp16", "no"], default="bf16"),
                io.Boolean.Input("gradient_checkpointing", default=True),
                io.Int.Input("gradient_accumulation_steps", default=1, min=1, max=1024),
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5, tooltip="5 is the paper's value; 0 off."),
                io.Combo.Input("loss_type", options=["l2", "huber", "smooth_l1", "l1"], default="l2"),
                io.Int.Input("save_every_n_steps", default=0, min=0, max=1000000),
                io.Combo.Input("save_precision", options=["fp16", "bf16", "float"], default="fp16"),
                io.String.Input("sample_prompts", multiline=True, default="",
                                tooltip="One prompt per line, sd-scripts style: a cat --n blurry --w 1024 --h 1024 --d 1 --l 7 --s 20"),
                io.Int.Input("sample_every_n_steps", default=0, min=0, max=1000000),
                io.Combo.Input("sample_sampler", options=list(SD_SCRIPTS_SAMPLERS), default="euler_a"),
                if_exists_input(),
                io.String.Input("extra_options", multiline=True, default="",
                                tooltip="Any other sd-scripts training option as TOML, e.g. network_args = [\"conv_alpha=1\"]"),
            ],
            outputs=[
                # "*": the one output type that links to core LoraLoader's lora_name list
                io.AnyType.Output(display_name="lora_name", tooltip="The trained file's name in the loras folder."),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="samples"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, conv_dim, train_text_encoder,
                **form) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        values = {**form, "output_name": output_name, "network_train_unet_only": not train_text_encoder}
        if conv_dim:
            values["network_args"] = {"conv_dim": str(conv_dim), "conv_alpha": str(form["network_alpha"])}
        extra, dataset = _extra_options(extra_options, dataset, "Train LoRA node")
        values.update(extra)
        cfg = config_from_dict(values, "Train LoRA node")
        cfg, out_dir = plan_run(cfg, default_output_dir(), if_exists, dataset)

        node_id = cls.hidden.unique_id
        pbar = comfy.utils.ProgressBar(cfg.max_train_steps, node_id=node_id)
        preview = {"image": None}

        def progress(step, total, loss):
            pbar.update_absolute(step, total, preview.pop("image", None))
            _send_text(f"step {step}/{total}  loss {loss:.4f}", node_id)

        def samples(step, images):
            preview["image"] = _preview(images)

        hooks = TrainHooks(progress=progress, samples=samples,
                           check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        result = train_lora(cfg, model, clip, vae, dataset, output_dir=out_dir, model_name=model_source_name(model),
                            hooks=hooks, latent_cache_dir=latent_cache_dir(),
                            data_progress=lambda done, total: _send_text(f"encoding latents {done}/{total}", node_id))
        curve = draw_loss_curve({"loss": result.losses})
        shown = _images_batch(result.samples[-1][1]) if result.samples else torch.zeros(1, 64, 64, 3)
        return io.NodeOutput(_lora_name(result.final_path), curve, shown, ui=ui.PreviewImage(curve, cls=cls))


def _send_text(text: str, node_id) -> None:
    from server import PromptServer

    if PromptServer.instance is not None and node_id is not None:
        PromptServer.instance.send_progress_text(text, node_id)


NODES = [DatasetFromFolder, DatasetFromToml, DatasetFromImages, TrainLoRA]
