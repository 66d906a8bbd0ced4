"""DreamBooth / fine-tuning of the whole model in a graph (SD1.5, SDXL). A form over
training.config.TrainConfig plus the full model's own options; everything it does is
training.full_model.train_full_model."""
from comfy_api.latest import io, ui

from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.full_model import FullModelOptions, train_full_model
from ..training.loss_curve import draw_loss_curve
from .training_form import (NodeProgress, extra_options_input, file_name_in, head_inputs, last_samples,
                            optimisation_inputs, parse_extra_options, plan_run, saved_files_text, saving_inputs)

CATEGORY = "LLLite Kit/training"
CHECKPOINT_FOLDERS = ("checkpoints",)


def checkpoints_dir() -> str:
    """ComfyUI's (first) checkpoints folder, where CheckpointLoaderSimple lists the trained file."""
    import folder_paths

    return folder_paths.get_folder_paths("checkpoints")[0]


def loras_dir() -> str:
    import folder_paths

    return folder_paths.get_folder_paths("loras")[0]


class TrainFullModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainFullModel",
            display_name="Train Full Model / DreamBooth (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="DreamBooth (identifier/class folders with regularization images and prior_loss_weight) or "
                        "fine-tuning (captions, metadata JSON) of the whole U-Net, optionally the text encoders, for "
                        "SD1.5 or SDXL. Saves single-file checkpoints into models/checkpoints that "
                        "CheckpointLoaderSimple loads; the graph's model keeps its weights. Needs memory for the "
                        "weights, their gradients and the optimizer state: see docs/full_model.md.",
            inputs=[
                *head_inputs("my_model", "models/checkpoints", 1000, 1e-6),
                io.Boolean.Input("train_text_encoder", default=False),
                io.Float.Input("learning_rate_te1", default=1e-6, min=0.0, max=10.0, step=1e-7, round=1e-9,
                               tooltip="Text encoder (SD1.5) / CLIP-L (SDXL); 0 keeps it frozen."),
                io.Float.Input("learning_rate_te2", default=1e-6, min=0.0, max=10.0, step=1e-7, round=1e-9,
                               tooltip="SDXL's CLIP-G; 0 keeps it frozen. Ignored for SD1.5."),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the regularization images' loss (DreamBooth)."),
                io.String.Input("block_lr", default="",
                                tooltip="SDXL only: 23 comma-separated learning rates (embedding, 9 input blocks, 3 "
                                        "middle, 9 output blocks, out); 0 freezes a block. Empty: learning_rate."),
                io.Int.Input("save_lora_dim", default=0, min=0, max=1024,
                             tooltip="> 0: also save the difference to the base model as a LoRA of this rank in "
                                     "models/loras (<output_name>_lora), as the LoRA tools' extraction makes it."),
                *optimisation_inputs("Adafactor or AdamW8bit save memory; full_bf16 = true in extra_options too."),
                *saving_inputs(),
                extra_options_input('full_bf16 = true or cache_latents_to_disk = true'),
            ],
            outputs=[
                # "*": links to CheckpointLoaderSimple's ckpt_name list
                io.AnyType.Output(display_name="ckpt_name", tooltip="The trained file's name in the checkpoints folder."),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, train_text_encoder,
                learning_rate_te1, learning_rate_te2, block_lr, save_lora_dim, **form) -> io.NodeOutput:
        from ..training.comfy_bridge import trainable_family

        sdxl = trainable_family(model) == "sdxl"
        options = FullModelOptions(train_text_encoder, learning_rate_te1, learning_rate_te2 if sdxl else None,
                                   block_lr.strip() or None, save_lora_dim)
        extra, dataset = parse_extra_options(extra_options, dataset, "Train Full Model node")
        cfg = config_from_dict({**form, **extra, "output_name": output_name}, "Train Full Model node")
        cfg, out_dir = plan_run(cfg, checkpoints_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)
        result = train_full_model(cfg, model, clip, vae, dataset, options, output_dir=out_dir,
                                  model_name=model_source_name(model), hooks=progress.hooks(),
                                  latent_cache_dir=latent_cache_dir(), lora_dir=loras_dir())
        curve = draw_loss_curve({"loss": result.losses})
        return io.NodeOutput(file_name_in(result.final_path, CHECKPOINT_FOLDERS), curve, last_samples(result),
                             saved_files_text(result.saved, CHECKPOINT_FOLDERS + ("loras",)), ui=ui.PreviewImage(curve, cls=cls))


NODES = [TrainFullModel]
