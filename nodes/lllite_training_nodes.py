"""Train ControlNet-LLLite in a graph (SDXL and SD1.5). A form over training.config.TrainConfig;
everything it does is training.session.train_lllite. Datasets come from the training nodes
(folder tree with conditioning_dir, sd-scripts TOML with conditioning_data_dir, in-graph images
with guide images)."""
from comfy_api.latest import io, ui

from ..lllite.weights import read_lllite
from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.control_gap import draw_training_curves, gap_text
from ..training.session import train_lllite
from .common import image_to_bchw
from .lllite_nodes import LLLite
from .training_form import (NodeProgress, controllability_inputs, extra_options_input, file_name_in, head_inputs,
                            last_samples, optimisation_inputs, parse_extra_options, plan_run, saved_files_text, saving_inputs)

LLLITE_FOLDERS = ("lllite", "controlnet")
CATEGORY = "LLLite Kit/training"


def lllite_output_dir() -> str:
    """The pack's lllite model folder, where Load ControlNet-LLLite lists the trained file."""
    import folder_paths

    return folder_paths.get_folder_paths("lllite")[0]


class TrainLLLite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainLLLite",
            display_name="Train ControlNet-LLLite (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Trains a kohya-format ControlNet-LLLite (SDXL, SD1.5, or Anima in kohya's v2 format) into models/lllite, readable by Load "
                        "ControlNet-LLLite and other packs' LLLite loaders. The dataset needs guide images. Held-out "
                        "images measure the control gap: the loss with the wrong guide minus the loss with the right "
                        "one, ~0 at the start and growing while the control is learned.",
            inputs=[
                *head_inputs("my_lllite", "models/lllite", 2000, 2e-4,
                             "A training dataset with guide images (conditioning_dir / conditioning_data_dir, or guides "
                             "wired into the in-graph dataset)."),
                io.Int.Input("cond_emb_dim", default=32, min=2, max=1024, step=2,
                             tooltip="Guide-embedding width (kohya: 32 for Canny, about half for depth)."),
                io.Int.Input("network_dim", default=64, min=1, max=1024, tooltip="Width of the LoRA-like modules (kohya: 64)."),
                io.Float.Input("network_dropout", default=0.0, min=0.0, max=0.99, step=0.01, tooltip="Dropout after mid, training only."),
                io.Boolean.Input("lllite_output_blocks", default=False, optional=True,
                                 tooltip="SDXL and SD1.5: also put modules on the decoder's (output blocks') attention, as "
                                         "kohya's SKIP_OUTPUT_BLOCKS = False does: about twice the modules; kohya's and "
                                         "Advanced-ControlNet's LLLite nodes apply such files too. Off: kohya's default."),
                *optimisation_inputs("kohya recommends AdamW8bit (bitsandbytes)."),
                io.Boolean.Input("cache_latents", default=True, tooltip="Encode every image once (the VAE then leaves the device)."),
                io.Boolean.Input("cache_latents_to_disk", default=False, tooltip="Keep the latents for later runs too."),
                io.Int.Input("heldout_images", default=4, min=0, max=1000,
                             tooltip="Images kept out of training to measure the control gap (at least 2); 0: off."),
                io.Int.Input("validate_every_n_steps", default=100, min=0, max=1000000,
                             tooltip="Control gap every n steps (and at the start and end)."),
                *saving_inputs(),
                extra_options_input('min_timestep = 100 or network_weights = "/path/start.safetensors"'),
                *controllability_inputs(),
                io.Image.Input("sample_guide", optional=True,
                               tooltip="Guide image of the sample images (needed when sample_prompts are given)."),
            ],
            outputs=[
                LLLite.Output(display_name="lllite", tooltip="The trained file as loaded, for Apply ControlNet-LLLite."),
                io.String.Output(display_name="lllite_name", tooltip="The trained file's name in models/lllite."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss, and the control gap below it."),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, heldout_images, sample_guide=None,
                **form) -> io.NodeOutput:
        values = {**form, "output_name": output_name}
        extra, dataset = parse_extra_options(extra_options, dataset, "Train ControlNet-LLLite node")
        values.update(extra)
        cfg = config_from_dict(values, "Train ControlNet-LLLite node")
        cfg, out_dir = plan_run(cfg, lllite_output_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)

        def evaluated(step, result):
            progress.text(f"step {step}: {gap_text(result)}")
            progress.suffix = f"  {gap_text(result)}"

        guide = None if sample_guide is None else image_to_bchw(sample_guide[:1]).cpu() * 2 - 1
        result = train_lllite(cfg, model, clip, vae, dataset, output_dir=out_dir, model_name=model_source_name(model),
                              hooks=progress.hooks(evaluated=evaluated), latent_cache_dir=latent_cache_dir(),
                              holdout=heldout_images, sample_guide=guide)
        curve = draw_training_curves(result.losses, result.evaluations)
        name = file_name_in(result.final_path, LLLITE_FOLDERS)
        return io.NodeOutput(read_lllite(str(result.final_path), name), name, curve, last_samples(result),
                             saved_files_text(result.saved, LLLITE_FOLDERS), ui=ui.PreviewImage(curve, cls=cls))


NODES = [TrainLLLite]
