"""Distil a ControlNet that core ComfyUI loaded into a ControlNet-LLLite (SD1.5 and SDXL): the
LLLite training form with the teacher's inputs; everything it does is
training.distill.session.distill_controlnet."""
from comfy_api.latest import io, ui

from ..lllite.weights import read_lllite
from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.distill.evaluate import agreement_text, draw_distill_curves
from ..training.distill.session import distill_controlnet
from ..training.distill.teacher import ControlNetTeacher
from .common import image_to_bchw
from .lllite_nodes import LLLite
from .lllite_training_nodes import LLLITE_FOLDERS, lllite_output_dir
from .training_form import (NodeProgress, controllability_inputs, extra_options_input, file_name_in, head_inputs,
                            last_samples, optimisation_inputs, parse_extra_options, plan_run, saved_files_text, saving_inputs)

CATEGORY = "LLLite Kit/training"


class DistillControlNetToLLLite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DistillControlNetToLLLite",
            display_name="Distil ControlNet into LLLite (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Trains a kohya-format ControlNet-LLLite (SDXL or SD1.5) to do what a full ControlNet does: for "
                        "the dataset's guide images and random noise levels, the LLLite-patched model learns the "
                        "ControlNet-guided model's prediction (same caption for both, no CFG; no target pictures). "
                        "Held-out images show the distance to the ControlNet's prediction, of the LLLite and of the "
                        "bare model.",
            inputs=[
                *head_inputs("my_distilled_lllite", "models/lllite", 2000, 2e-4,
                             "A training dataset with guide images; its pictures only give the latents the noise is "
                             "added to (the model's own generations work)."),
                io.ControlNet.Input("control_net", tooltip="The teacher, from Load ControlNet Model."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01, tooltip="The teacher's strength."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where the teacher's control starts (fraction of the schedule)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where it stops; outside the range the target is the bare model."),
                io.Int.Input("cond_emb_dim", default=32, min=2, max=1024, step=2,
                             tooltip="Guide-embedding width of the LLLite (kohya: 32 for Canny)."),
                io.Int.Input("network_dim", default=64, min=1, max=1024, tooltip="Width of the LLLite's modules (kohya: 64)."),
                io.Boolean.Input("lllite_output_blocks", default=True, optional=True,
                                 tooltip="Also put modules on the decoder's (output blocks') attention (kohya's "
                                         "SKIP_OUTPUT_BLOCKS = False): a ControlNet's residuals enter the decoder, and "
                                         "there the LLLite keeps more of its control (docs/controllability.md). Off: "
                                         "kohya's layout, input and middle blocks only."),
                *optimisation_inputs("kohya recommends AdamW8bit (bitsandbytes)."),
                io.Boolean.Input("cache_latents", default=True, tooltip="Encode every image once (the VAE then leaves the device)."),
                io.Int.Input("heldout_images", default=4, min=0, max=1000,
                             tooltip="Images kept out of training to measure the distance to the teacher; 0: off."),
                io.Int.Input("validate_every_n_steps", default=100, min=0, max=1000000,
                             tooltip="Distance to the teacher every n steps (and at the start and end)."),
                *saving_inputs(),
                extra_options_input('min_timestep = 100 or network_weights = "/path/start.safetensors"'),
                *controllability_inputs(),
                io.Image.Input("sample_guide", optional=True,
                               tooltip="Guide image of the sample images (needed when sample_prompts are given)."),
            ],
            outputs=[
                LLLite.Output(display_name="lllite", tooltip="The distilled file as loaded, for Apply ControlNet-LLLite."),
                io.String.Output(display_name="lllite_name", tooltip="The file's name in models/lllite."),
                io.Image.Output(display_name="loss_curve", tooltip="Distillation loss, and the distances to the teacher below."),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, heldout_images, control_net,
                strength, start_percent, end_percent, sample_guide=None, lllite_output_blocks=True, **form) -> io.NodeOutput:
        values = {**form, "output_name": output_name, "lllite_output_blocks": lllite_output_blocks}
        extra, dataset = parse_extra_options(extra_options, dataset, "Distil ControlNet into LLLite node")
        values.update(extra)
        cfg = config_from_dict(values, "Distil ControlNet into LLLite node")
        cfg, out_dir = plan_run(cfg, lllite_output_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)

        def evaluated(step, result):
            progress.text(f"step {step}: {agreement_text(result)}")
            progress.suffix = f"  {agreement_text(result)}"

        teacher = ControlNetTeacher(control_net, strength, start_percent, end_percent)
        guide = None if sample_guide is None else image_to_bchw(sample_guide[:1]).cpu() * 2 - 1
        result = distill_controlnet(cfg, model, clip, vae, dataset, teacher, output_dir=out_dir,
                                    model_name=model_source_name(model), hooks=progress.hooks(evaluated=evaluated),
                                    latent_cache_dir=latent_cache_dir(), holdout=heldout_images, sample_guide=guide)
        curve = draw_distill_curves(result.losses, result.evaluations)
        name = file_name_in(result.final_path, LLLITE_FOLDERS)
        return io.NodeOutput(read_lllite(str(result.final_path), name), name, curve, last_samples(result),
                             saved_files_text(result.saved, LLLITE_FOLDERS), ui=ui.PreviewImage(curve, cls=cls))


NODES = [DistillControlNetToLLLite]
