"""Train on several GPUs: the node starts scripts/train.py as a separate torchrun job (never a
second ComfyUI), shows its progress, samples and loss here, forwards Cancel, and returns the
saved file. Everything it runs is training.distributed_launch and the command line's trainer."""
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..errors import user_error
from ..files.atomic import write_atomic
from ..training.comfy_bridge import default_output_dir
from ..training.config import load_config
from ..training.distributed_launch import TRAIN_SCRIPT, follow_job, read_png, torchrun_command
from ..training.output_files import plan_output
from ..training.session import datasets_from_config
from .controlnet_nodes import FOLDERS as CONTROLNET_FOLDERS
from .controlnet_nodes import controlnet_dir
from .lllite_training_nodes import LLLITE_FOLDERS, lllite_output_dir
from .training_form import (NodeProgress, check_dataset_paths, file_name_in, if_exists_input, images_batch, resolve_path,
                            saved_files_text)

CATEGORY = "LLLite Kit/training"
# trainer -> (folder names its files are listed in, where they are written by default)
TRAINERS = {"lora": (("loras",), default_output_dir), "lllite": (LLLITE_FOLDERS, lllite_output_dir),
            "controlnet": (CONTROLNET_FOLDERS, controlnet_dir)}
EXAMPLE_CONFIG = """# sd-scripts training options (TOML), as in a config file for train.py
network_dim = 16
network_alpha = 8
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
max_train_steps = 2000
mixed_precision = "bf16"
gradient_checkpointing = true
save_every_n_steps = 500
"""


@user_error
class NotEnoughDevices(RuntimeError):
    pass


def check_devices(processes: int, available: int) -> None:
    """Refuse before anything starts: a data-parallel job needs a GPU per process, and at least two."""
    if available < 2:
        raise NotEnoughDevices(f"Train on several GPUs needs at least 2 NVIDIA GPUs on this machine; torch sees {available}. "
                               "Train with the Train LoRA or Train LLLite node instead.")
    if processes > available:
        raise NotEnoughDevices(f"processes = {processes} but this machine has {available} GPUs: use at most {available}.")


class TrainDistributed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLLiteKit_TrainDistributed",
            display_name="Train on several GPUs (torchrun)",
            category=CATEGORY,
            description="Trains a LoRA, LLLite or ControlNet data-parallel on this machine's GPUs (or several machines) as a separate "
                        "torchrun job of scripts/train.py; progress, samples and the loss come back here, Cancel stops "
                        "every process at the same step. Batch size is per GPU.",
            inputs=[
                io.Combo.Input("trainer", options=list(TRAINERS), default="lora"),
                io.Combo.Input("checkpoint", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="The model to train on, from models/checkpoints (each process loads it)."),
                io.String.Input("dataset_config", default="training/dataset.toml",
                                tooltip="An sd-scripts dataset TOML (relative paths: ComfyUI's input folder)."),
                io.String.Input("config", default=EXAMPLE_CONFIG, multiline=True,
                                tooltip="sd-scripts training options, TOML: everything the command line's config file takes."),
                io.String.Input("output_name", default="my_lora", tooltip="File name without extension; subfolders allowed."),
                if_exists_input(),
                io.Int.Input("processes", default=2, min=1, max=64, tooltip="GPUs to use on this machine (one process each)."),
                io.Int.Input("machines", default=1, min=1, max=1024, advanced=True,
                             tooltip="Several machines: start the same graph (or scripts/train.py under torchrun) on each."),
                io.Int.Input("machine_rank", default=0, min=0, max=1023, advanced=True),
                io.String.Input("rendezvous", default="", advanced=True,
                                tooltip="host:port of machine 0, reachable from every machine (several machines only)."),
            ],
            outputs=[
                io.AnyType.Output(display_name="file_name", tooltip="The trained file's name in its models folder."),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # it trains and saves even when nothing uses its outputs
        )

    @classmethod
    def execute(cls, trainer, checkpoint, dataset_config, config, output_name, if_exists, processes, machines,
                machine_rank, rendezvous) -> io.NodeOutput:
        check_devices(processes, torch.cuda.device_count())
        folders, default_dir = TRAINERS[trainer]
        job = Path(folder_paths.get_temp_directory()) / "lllite_kit_jobs"
        config_file = job / f"{Path(output_name).name}-config.toml"
        write_atomic(config_file, lambda tmp: Path(tmp).write_text(config, encoding="utf-8"), "job config")
        dataset_file = resolve_path(dataset_config, "dataset_config")
        model_file = folder_paths.get_full_path_or_raise("checkpoints", checkpoint)
        out_dir = Path(default_dir())
        cfg = load_config(config_file, output_name=output_name, output_dir=str(out_dir), dataset_config=str(dataset_file),
                          pretrained_model_name_or_path=model_file)  # every option checked before a process starts
        check_dataset_paths(datasets_from_config(cfg))
        name, state = plan_output(out_dir, cfg.output_name, if_exists)
        args = ["--config_file", str(config_file), "--trainer", trainer, "--output_name", name, "--output_dir", str(out_dir),
                "--dataset_config", str(dataset_file), "--pretrained_model_name_or_path", model_file, "--progress_json",
                "--stop_file", str(job / f"{Path(name).name}.stop")]
        if state:
            args += ["--resume", str(state)]
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)
        hooks = progress.hooks()
        hooks.phase(f"starting {processes} process(es) x {machines} machine(s)")
        done = follow_job(torchrun_command(TRAIN_SCRIPT, args, processes, machines, machine_rank, rendezvous),
                          job / f"{Path(name).name}.stop", hooks, env={"COMFYUI_DIR": str(Path(folder_paths.__file__).parent)})
        curve = read_png(done["curve"])
        samples = images_batch([read_png(f) for f in done["samples"]]) if done["samples"] else torch.zeros(1, 64, 64, 3)
        return io.NodeOutput(file_name_in(Path(done["final"]), folders), curve, samples,
                             saved_files_text([Path(p) for p in done["saved"]], folders), ui=ui.PreviewImage(curve, cls=cls))


NODES = [TrainDistributed]
