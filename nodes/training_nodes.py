"""Training nodes: datasets (folder tree, sd-scripts TOML, in-graph images) and LoRA training.
The train node is a form over training.config.TrainConfig; everything it does is
training.session.train_lora, the same call the command line makes."""
from comfy_api.latest import io, ui

from ..training.comfy_bridge import default_output_dir, latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.data.config import DatasetConfig, SubsetConfig, load_dataset_toml
from ..training.data.folders import subsets_from_folder_tree
from ..training.data.lists import items_from_tensors
from ..training.loss_curve import draw_loss_curve
from ..training.session import train_lora
from .common import image_to_bchw
from .training_form import (Dataset, NodeProgress, extra_options_input, file_name_in, head_inputs, last_samples,
                            optimisation_inputs, parse_extra_options, plan_run, resolve_path, saved_files_text,
                            saving_inputs)

CATEGORY = "LLLite Kit/training"


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
                *head_inputs("my_lora", "the loras folder", 1600, 1e-4),
                io.Int.Input("network_dim", default=16, min=1, max=1024, tooltip="LoRA rank."),
                io.Float.Input("network_alpha", default=8.0, min=0.0, max=1024.0, step=0.5, tooltip="Scale = alpha / dim."),
                io.Int.Input("conv_dim", default=0, min=0, max=1024, tooltip="> 0: LoRA-C3Lier, 3x3 convs too."),
                io.Boolean.Input("train_text_encoder", default=False),
                io.Float.Input("text_encoder_lr", default=5e-5, min=0.0, max=10.0, step=1e-6, round=1e-8),
                *optimisation_inputs("8bit: bitsandbytes; Prodigy: prodigyopt; DAdaptAdam: dadaptation."),
                *saving_inputs(),
                extra_options_input('network_args = ["conv_alpha=1"] or flip_aug = true'),
            ],
            outputs=[
                # "*": the one output type that links to core LoraLoader's lora_name list
                io.AnyType.Output(display_name="lora_name", tooltip="The trained file's name in the loras folder."),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, conv_dim, train_text_encoder,
                **form) -> io.NodeOutput:
        values = {**form, "output_name": output_name, "network_train_unet_only": not train_text_encoder}
        if conv_dim:
            values["network_args"] = {"conv_dim": str(conv_dim), "conv_alpha": str(form["network_alpha"])}
        extra, dataset = parse_extra_options(extra_options, dataset, "Train LoRA node")
        values.update(extra)
        cfg = config_from_dict(values, "Train LoRA node")
        cfg, out_dir = plan_run(cfg, default_output_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)
        result = train_lora(cfg, model, clip, vae, dataset, output_dir=out_dir, model_name=model_source_name(model),
                            hooks=progress.hooks(), latent_cache_dir=latent_cache_dir())
        curve = draw_loss_curve({"loss": result.losses})
        return io.NodeOutput(file_name_in(result.final_path, ("loras",)), curve, last_samples(result),
                             saved_files_text(result.saved, ("loras",)), ui=ui.PreviewImage(curve, cls=cls))


NODES = [DatasetFromFolder, DatasetFromToml, DatasetFromImages, TrainLoRA]
