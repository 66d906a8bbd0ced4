"""ControlNet nodes: train one (lllyasviel's recipe, on the one engine), read a Fill50K folder,
move one onto another base model, apply one with A1111's control modes. Everything they do is
training/controlnet/ and core's ControlNet objects."""
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..files.names import check_output_name
from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.control_gap import draw_training_curves, gap_text
from ..training.controlnet.control_modes import MODES, parse_block_weights, with_control_mode
from ..training.controlnet.layouts import AUTO, LAYOUTS
from ..training.controlnet.network import ControlNetError
from ..training.data.config import DatasetConfig, SubsetConfig
from ..training.data.fill50k import subset_from_fill50k
from ..training.output_files import plan_output
from .common import image_to_bchw
from .training_form import (Dataset, NodeProgress, controllability_inputs, extra_options_input, file_name_in, head_inputs,
                            last_samples, optimisation_inputs, parse_extra_options, plan_run, resolve_path, saved_files_text,
                            saving_inputs)

FOLDERS = ("controlnet",)
TRAIN_CATEGORY = "LLLite Kit/training"
CATEGORY = "LLLite Kit/ControlNet"
NO_FILE = "none: make one from the base U-Net"


def controlnet_dir() -> str:
    return folder_paths.get_folder_paths("controlnet")[0]


def controlnet_files() -> list[str]:
    return [n for n in folder_paths.get_filename_list("controlnet") if n.endswith(".safetensors")]


def controlnet_path(name: str) -> str:
    path = folder_paths.get_full_path("controlnet", name)
    if path is None:
        raise FileNotFoundError(f"ControlNet file '{name}' not found in models/controlnet "
                                f"({'; '.join(folder_paths.get_folder_paths('controlnet'))}).")
    return path


def load_in_core(path: str):
    import comfy.controlnet

    return comfy.controlnet.load_controlnet(path)


class DatasetFromFill50K(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DatasetFromFill50K",
            display_name="Training Dataset from Fill50K Folder (LLLite Kit)",
            category=TRAIN_CATEGORY,
            description="lllyasviel's ControlNet training layout as it is: prompt.json (one {\"source\", \"target\", "
                        "\"prompt\"} object per line), source/ (guides) and target/ (images).",
            inputs=[
                io.String.Input("folder", default="training/fill50k", tooltip="Relative paths are read from ComfyUI's input folder."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=64),
                io.Int.Input("batch_size", default=4, min=1, max=64, tooltip="lllyasviel: 4 (or 1 with accumulation 4)."),
                io.Int.Input("num_repeats", default=1, min=1, max=1000),
            ],
            outputs=[Dataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, folder, resolution, batch_size, num_repeats) -> io.NodeOutput:
        subset = subset_from_fill50k(resolve_path(folder, "Fill50K folder"), SubsetConfig(num_repeats=num_repeats))
        return io.NodeOutput([DatasetConfig(subsets=[subset], resolution=(resolution, resolution), batch_size=batch_size,
                                            enable_bucket=False)])


class TrainControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainControlNet",
            display_name="Train ControlNet (LLLite Kit)",
            category=TRAIN_CATEGORY,
            is_output_node=True,
            description="Trains a full ControlNet (SD1.5 or SDXL) into models/controlnet, in lllyasviel's control_model.* "
                        "layout that core's Load ControlNet Model and A1111 read. Starts from the base U-Net "
                        "(tool_add_control: encoder copied, zero convolutions zero) or from a ControlNet file. Held-out "
                        "images measure the control gap (0 at the start; it jumps at the 'sudden convergence').",
            inputs=[
                *head_inputs("my_controlnet", "models/controlnet", 10000, 1e-5,
                             "A dataset with guide images (Fill50K folder, conditioning_dir / conditioning_data_dir, or "
                             "guides wired into the in-graph dataset)."),
                io.Combo.Input("start_from", options=[NO_FILE, *controlnet_files()], default=NO_FILE,
                               tooltip="A ControlNet file of this model's family to fine-tune, or a new one from the base."),
                io.Boolean.Input("sd_locked", default=True,
                                 tooltip="lllyasviel's sd_locked. False also trains the U-Net's decoder (output blocks): "
                                         "saved as <name>_unet.safetensors, a whole U-Net for Load Diffusion Model."),
                io.Boolean.Input("only_mid_control", default=False, tooltip="Train with the middle-block control only."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Multiplies the control while training (lllyasviel's control_scales)."),
                io.Float.Input("guide_dropout", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Probability of a black guide per image: trains the no-guide case (guess mode)."),
                io.Combo.Input("file_layout", options=list(LAYOUTS), default=AUTO, optional=True,
                               tooltip="auto: for SDXL sd-scripts' layout (what sdxl_train_control_net.py writes) where core "
                                       "loads it back, else lllyasviel's control_model.* (SD1.5 always). Both load in core."),
                *optimisation_inputs("lllyasviel: AdamW at 1e-5; AdamW8bit (bitsandbytes) saves memory."),
                io.Boolean.Input("cache_latents", default=True),
                io.Boolean.Input("cache_latents_to_disk", default=False),
                io.Int.Input("heldout_images", default=4, min=0, max=1000,
                             tooltip="Images kept out of training to measure the control gap (at least 2); 0: off."),
                io.Int.Input("validate_every_n_steps", default=500, min=0, max=1000000),
                *saving_inputs(),
                extra_options_input("min_snr_gamma = 5 or full_bf16 = true"),
                *controllability_inputs(),
                io.Image.Input("sample_guide", optional=True, tooltip="Guide image of the sample images."),
            ],
            outputs=[
                io.ControlNet.Output(display_name="control_net", tooltip="The trained file, loaded by core."),
                io.String.Output(display_name="controlnet_name"),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss, and the control gap below it."),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files"),
                io.Int.Output(display_name="gap_rose_at_step", tooltip="First evaluation step where the control gap "
                              "rose clearly (above 5 % of the held-out loss); -1: not yet."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, heldout_images, start_from,
                sd_locked, only_mid_control, control_strength, guide_dropout, file_layout=AUTO, sample_guide=None,
                **form) -> io.NodeOutput:
        from ..training.controlnet.train import train_controlnet

        values = {**form, "output_name": output_name}
        extra, dataset = parse_extra_options(extra_options, dataset, "Train ControlNet node")
        values.update(extra)
        cfg = config_from_dict(values, "Train ControlNet node")
        cfg, out_dir = plan_run(cfg, controlnet_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)

        seen = []

        def evaluated(step, result):
            seen.append((step, result))
            text = evaluation_text(seen)
            progress.text(f"step {step}: {text}")
            progress.suffix = f"  {text}"

        guide = None if sample_guide is None else image_to_bchw(sample_guide[:1]).cpu() * 2 - 1
        result = train_controlnet(
            cfg, model, clip, vae, dataset, output_dir=out_dir, model_name=model_source_name(model),
            hooks=progress.hooks(evaluated=evaluated), latent_cache_dir=latent_cache_dir(), holdout=heldout_images,
            sample_guide=guide, control_weights=None if start_from == NO_FILE else controlnet_path(start_from),
            sd_locked=sd_locked, only_mid_control=only_mid_control, control_strength=control_strength,
            guide_dropout=guide_dropout, file_layout=file_layout)
        rose = gap_rose_at(result.evaluations)
        if rose >= 0:
            progress.text(f"the control gap rose clearly at step {rose}")
        curve = draw_training_curves(result.losses, result.evaluations)
        name = file_name_in(result.final_path, FOLDERS)
        return io.NodeOutput(load_in_core(str(result.final_path)), name, curve, last_samples(result),
                             saved_files_text(result.saved, FOLDERS), rose, ui=ui.PreviewImage(curve, cls=cls))


def gap_rose_at(evaluations, share: float = 0.05) -> int:
    """First step whose control gap exceeds `share` of that step's held-out loss (-1: none):
    the 'sudden convergence' seed 004 describes, as far as the evaluation interval shows it."""
    for step, r in evaluations:
        if r["control_gap"] > share * r["heldout_correct"]:
            return step
    return -1


def evaluation_text(evaluations) -> str:
    """The latest control gap for the progress text, and from the evaluation where it first rose
    clearly on, that step (so the rise shows while training goes on, not only at the end)."""
    rose = gap_rose_at(evaluations)
    return gap_text(evaluations[-1][1]) + (f"; the control gap rose clearly at step {rose}" if rose >= 0 else "")


class ApplyControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_ApplyControlNet",
            display_name="Apply ControlNet with Control Mode (LLLite Kit)",
            category=CATEGORY,
            description="Core's Apply ControlNet with A1111's options: control mode (Balanced = core's apply; My prompt is "
                        "more important = A1111's soft weights 0.825^(12-i); ControlNet is more important = soft weights "
                        "and the control on the conditional half only), per-block weights, invert input, a mask, start/end "
                        "by noise level. Takes any ControlNet core loads; stacks with core's nodes and LLLite.",
            inputs=[
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.ControlNet.Input("control_net"),
                io.Image.Input("image"),
                io.Float.Input("weight", default=1.0, min=0.0, max=10.0, step=0.01),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule (by noise level) where the control starts (A1111's "
                                       "guidance start)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule (by noise level) where the control stops (A1111's "
                                       "guidance end)."),
                io.Combo.Input("control_mode", options=list(MODES), default=MODES[0]),
                io.Boolean.Input("invert_input", default=False, tooltip="White lines on black <-> black on white."),
                io.String.Input("block_weights", default="", tooltip="A1111's advanced weighting: one weight per output, "
                                "13 for SD1.5 (12 input blocks, middle last), 10 for SDXL; replaces the mode's scales."),
                io.Vae.Input("vae", optional=True),
                io.Mask.Input("mask", optional=True, tooltip="Where the control acts (1) and where not (0); resized to "
                              "each control output's resolution. One mask for all latents, or one per latent."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, image, weight, start_percent, end_percent, control_mode,
                invert_input, block_weights, vae=None, mask=None) -> io.NodeOutput:
        import nodes

        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ControlNetError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent} and {end_percent}")
        moded = with_control_mode(control_net, control_mode, parse_block_weights(block_weights), mask)
        image = 1.0 - image if invert_input else image
        return io.NodeOutput(*nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, moded, image, weight, start_percent, end_percent, vae=vae))


class TransferControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TransferControlNet",
            display_name="Transfer ControlNet to Another Base (LLLite Kit)",
            category=CATEGORY,
            description="lllyasviel's tool_transfer_control: a ControlNet trained on old_model, moved onto new_model by "
                        "adding (new - old) to the weights it copied from the U-Net. Both models of the ControlNet's "
                        "family (SD1.5 to SD1.5, SDXL to SDXL). Writes models/controlnet/<output_name>.safetensors.",
            inputs=[
                io.Combo.Input("controlnet_name", options=controlnet_files()),
                io.Model.Input("old_model", tooltip="The base the ControlNet was trained on."),
                io.Model.Input("new_model", tooltip="The base to move it to (e.g. a fine-tune of old_model)."),
                io.String.Input("output_name", default="my_controlnet_transferred"),
                io.Combo.Input("save_precision", options=["fp16", "bf16", "float"], default="fp16"),
            ],
            outputs=[io.ControlNet.Output(display_name="control_net"), io.String.Output(display_name="controlnet_name")],
        )

    @classmethod
    def execute(cls, controlnet_name, old_model, new_model, output_name, save_precision) -> io.NodeOutput:
        import torch

        from ..training.controlnet.transfer import transfer_control
        from ..training.controlnet.weights import read_controlnet, save_tensors

        check_output_name(output_name)
        name, _ = plan_output(Path(controlnet_dir()), output_name, "new name")  # an existing file is kept: name_2 ...
        control = read_controlnet(controlnet_path(controlnet_name))
        moved = transfer_control(control, _unet_state(old_model), _unet_state(new_model))
        path = Path(controlnet_dir()) / f"{name}.safetensors"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[save_precision]
        save_tensors(str(path), moved, dtype, {"ss_network_module": "controlnet", "ss_transferred_from": controlnet_name})
        return io.NodeOutput(load_in_core(str(path)), file_name_in(path, FOLDERS))


def _unet_state(model) -> dict:
    """The U-Net's weights with the MODEL's patches (LoRAs ...) applied, as core's diff-ControlNet loader reads them."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    prefix = "diffusion_model."
    return {k[len(prefix):]: v for k, v in model.model_state_dict().items() if k.startswith(prefix)}


NODES = [DatasetFromFill50K, TrainControlNet, ApplyControlNet, TransferControlNet]
