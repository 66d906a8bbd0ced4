"""Train ControlNet-LLLite in a graph (SDXL and SD1.5). A form over training.config.TrainConfig;
everything it does is training.session.train_lllite. Datasets come from the training nodes
(folder tree with conditioning_dir, sd-scripts TOML with conditioning_data_dir, in-graph images
with guide images)."""
import logging
from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..lllite.weights import read_lllite
from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.control_gap import draw_training_curves, gap_text
from ..training.engine import TrainHooks
from ..training.samples import SD_SCRIPTS_SAMPLERS
from ..training.schedulers import SCHEDULERS
from ..training.session import train_lllite
from .common import image_to_bchw
from .training_run import if_exists_input, plan_run
from .lllite_nodes import LLLite
from .training_nodes import OPTIMIZERS, Dataset, _extra_options, _images_batch, _preview, _send_text

log = logging.getLogger(__name__)

CATEGORY = "LLLite Kit/training"


def lllite_output_dir() -> str:
    """The pack's lllite model folder, where Load ControlNet-LLLite lists the trained file."""
    import folder_paths

    return folder_paths.get_folder_paths("lllite")[0]


def _file_name(path: Path) -> str:
    """The name Load ControlNet-LLLite lists for `path`."""
    import folder_paths

    for folder in ("lllite", "controlnet"):
        for root in folder_paths.get_folder_paths(folder):
            try:
                return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                continue
    log.warning("%s is outside the lllite and controlnet model folders: Load ControlNet-LLLite will not list it", path)
    return str(path)


class TrainLLLite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainLLLite",
            display_name="Train ControlNet-LLLite (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Trains a kohya-format ControlNet-LLLite (SDXL or SD1.5) into models/lllite, readable by Load "
                        "ControlNet-LLLite and other packs' LLLite loaders. The dataset needs guide images. Held-out "
                        "images measure the control gap: the loss with the wrong guide minus the loss with the right "
                        "one, ~0 at the start and growing while the control is learned.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Vae.Input("vae"),
                Dataset.Input("dataset", tooltip="A training dataset with guide images (conditioning_dir / "
                              "conditioning_data_dir, or guides wired into the in-graph dataset)."),
                io.String.Input("output_name", default="my_lllite", tooltip="File name in models/lllite, without extension."),
                io.Int.Input("max_train_steps", default=2000, min=1, max=1000000),
                io.Float.Input("learning_rate", default=2e-4, min=0.0, max=10.0, step=1e-6, round=1e-8),
                io.Int.Input("cond_emb_dim", default=32, min=2, max=1024, step=2,
                             tooltip="Guide-embedding width (kohya: 32 for Canny, about half for depth)."),
                io.Int.Input("network_dim", default=64, min=1, max=1024, tooltip="Width of the LoRA-like modules (kohya: 64)."),
                io.Float.Input("network_dropout", default=0.0, min=0.0, max=0.99, step=0.01, tooltip="Dropout after mid, training only."),
                io.Combo.Input("optimizer_type", options=OPTIMIZERS, default="AdamW",
                               tooltip="kohya recommends AdamW8bit (bitsandbytes, installed separately)."),
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
                io.Boolean.Input("cache_latents", default=True, tooltip="Encode every image once (the VAE then leaves the device)."),
                io.Boolean.Input("cache_latents_to_disk", default=False, tooltip="Keep the latents for later runs too."),
                io.Int.Input("heldout_images", default=4, min=0, max=1000,
                             tooltip="Images kept out of training to measure the control gap (at least 2); 0: off."),
                io.Int.Input("validate_every_n_steps", default=100, min=0, max=1000000,
                             tooltip="Control gap every n steps (and at the start and end)."),
                io.Int.Input("save_every_n_steps", default=0, min=0, max=1000000),
                io.Combo.Input("save_precision", options=["fp16", "bf16", "float"], default="fp16"),
                io.String.Input("sample_prompts", multiline=True, default="",
                                tooltip="One prompt per line, sd-scripts style: a cat --n blurry --w 1024 --h 1024 --d 1 --l 7 --s 20"),
                io.Int.Input("sample_every_n_steps", default=0, min=0, max=1000000),
                io.Combo.Input("sample_sampler", options=list(SD_SCRIPTS_SAMPLERS), default="euler_a"),
                if_exists_input(),
                io.String.Input("extra_options", multiline=True, default="",
                                tooltip="Any other sd-scripts training option as TOML, e.g. min_timestep = 100 or "
                                        "network_weights = \"/path/start.safetensors\""),
                io.Image.Input("sample_guide", optional=True,
                               tooltip="Guide image of the sample images (needed when sample_prompts are given)."),
            ],
            outputs=[
                LLLite.Output(display_name="lllite", tooltip="The trained file as loaded, for Apply ControlNet-LLLite."),
                io.String.Output(display_name="lllite_name", tooltip="The trained file's name in models/lllite."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss, and the control gap below it."),
                io.Image.Output(display_name="samples"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, heldout_images, sample_guide=None,
                **form) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        values = {**form, "output_name": output_name}
        extra, dataset = _extra_options(extra_options, dataset, "Train ControlNet-LLLite node")
        values.update(extra)
        cfg = config_from_dict(values, "Train ControlNet-LLLite node")
        cfg, out_dir = plan_run(cfg, lllite_output_dir(), if_exists, dataset)

        node_id = cls.hidden.unique_id
        pbar = comfy.utils.ProgressBar(cfg.max_train_steps, node_id=node_id)
        preview = {"image": None}
        gap = {"last": None}

        def evaluated(step, result):
            gap["last"] = result
            _send_text(f"step {step}: {gap_text(result)}", node_id)

        def progress(step, total, loss):
            pbar.update_absolute(step, total, preview.pop("image", None))
            _send_text(f"step {step}/{total}  loss {loss:.4f}  {gap_text(gap['last'])}" if heldout_images
                       else f"step {step}/{total}  loss {loss:.4f}", node_id)

        def samples(step, images):
            preview["image"] = _preview(images)

        guide = None if sample_guide is None else image_to_bchw(sample_guide[:1]).cpu() * 2 - 1
        hooks = TrainHooks(progress=progress, samples=samples, evaluated=evaluated,
                           check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        result = train_lllite(cfg, model, clip, vae, dataset, output_dir=out_dir, model_name=model_source_name(model),
                              hooks=hooks, latent_cache_dir=latent_cache_dir(), holdout=heldout_images, sample_guide=guide)
        curve = draw_training_curves(result.losses, result.evaluations)
        shown = _images_batch(result.samples[-1][1]) if result.samples else torch.zeros(1, 64, 64, 3)
        name = _file_name(result.final_path)
        return io.NodeOutput(read_lllite(str(result.final_path), name), name, curve, shown, ui=ui.PreviewImage(curve, cls=cls))


NODES = [TrainLLLite]
