"""What every training node shares around its library call: the form inputs they have in
common (in the order saved workflows rely on), extra_options, where the run writes (only inside
ComfyUI's folders; an existing output name kept, resumed or replaced by explicit choice), which
user-typed paths a graph may read, and the run's progress in the UI (bar, text per phase,
sample previews)."""
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
import logging
from pathlib import Path

import torch
from comfy_api.latest import io

from ..files.roots import check_readable, check_writable
from ..training.config import TrainConfig, apply_dataset_options
from ..training.data.errors import DatasetError
from ..training.engine import TrainHooks
from ..training.output_files import IF_EXISTS, plan_output
from ..training.samples import SD_SCRIPTS_SAMPLERS
from ..training.schedulers import SCHEDULERS

log = logging.getLogger(__name__)

Dataset = io.Custom("LLLITEKIT_DATASET")

# the common ones; any other (DAdaptLion, torch.optim.RMSprop, module.Class) via extra_options
OPTIMIZERS = ["AdamW", "AdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "SGDNesterov8bit", "Prodigy", "DAdaptAdam", "AdaFactor"]


def head_inputs(output_name: str, folder: str, max_train_steps: int, learning_rate: float,
                dataset_tooltip: str = "A training dataset node's output.") -> list:
    return [
        io.Model.Input("model"),
        io.Clip.Input("clip"),
        io.Vae.Input("vae"),
        Dataset.Input("dataset", tooltip=dataset_tooltip),
        io.String.Input("output_name", default=output_name, tooltip=f"File name in {folder}, without extension; "
                        "subfolders allowed (people/anna)."),
        io.Int.Input("max_train_steps", default=max_train_steps, min=1, max=1000000),
        io.Float.Input("learning_rate", default=learning_rate, min=0.0, max=10.0, step=1e-6, round=1e-8),
    ]


def optimisation_inputs(optimizer_tooltip: str) -> list:
    return [
        io.Combo.Input("optimizer_type", options=OPTIMIZERS, default="AdamW", tooltip=optimizer_tooltip),
        io.String.Input("optimizer_args", default="", tooltip="key=value pairs, e.g. weight_decay=0.01 betas=0.9,0.999"),
        io.Combo.Input("lr_scheduler", options=list(SCHEDULERS[:-1]), default="constant"),
        io.Int.Input("lr_warmup_steps", default=0, min=0, max=1000000, tooltip="Must be shorter than the run."),
        io.Combo.Input("mixed_precision", options=["bf16", "fp16", "no"], default="bf16"),
        io.Boolean.Input("gradient_checkpointing", default=True, tooltip="Less memory, about 20-30 % slower steps."),
        io.Int.Input("gradient_accumulation_steps", default=1, min=1, max=1024),
        io.Int.Input("seed", default=42, min=0, max=2**31 - 1),
        io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01),
        io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5, tooltip="5 is the paper's value; 0 off."),
        io.Combo.Input("loss_type", options=["l2", "huber", "smooth_l1", "l1"], default="l2"),
    ]


def saving_inputs() -> list:
    return [
        io.Int.Input("save_every_n_steps", default=0, min=0, max=1000000,
                     tooltip="Also save every n steps (name-stepNNNNNNNN), each with a resumable state; 0: only at the end."),
        io.Combo.Input("save_precision", options=["fp16", "bf16", "float"], default="fp16"),
        io.String.Input("sample_prompts", multiline=True, default="",
                        tooltip="One prompt per line, sd-scripts style: a cat --n blurry --w 1024 --h 1024 --d 1 --l 7 --s 20 "
                                "--ss euler_a; or the name of a .txt file in ComfyUI's input folder"),
        io.Int.Input("sample_every_n_steps", default=0, min=0, max=1000000),
        io.Combo.Input("sample_sampler", options=list(SD_SCRIPTS_SAMPLERS), default="euler_a"),
        if_exists_input(),
    ]


def controllability_inputs() -> list:
    """The controllability check of guided trainers (LLLite, ControlNet): optional, so saved
    workflows without them load and run as before (off)."""
    from ..training.controllability.check import OFF
    from ..training.controllability.maps import KINDS

    return [
        io.Combo.Input("controllability_map", options=[OFF, *KINDS], default=OFF, optional=True,
                       tooltip="At each held-out evaluation (validate_every_n_steps, start and end), sample held-out "
                               "guides, run this preprocessor on the pictures and score them against the guides "
                               "(Canny/lineart/HED: edge F1; depth: RMSE; ...). Detectors need controllability_weights "
                               "= \"/path/file\" in extra_options. Costs one short sampling per image."),
        io.Int.Input("controllability_images", default=2, min=1, max=64, optional=True,
                     tooltip="Held-out guides sampled per evaluation (the first ones, fixed seeds)."),
        io.Int.Input("controllability_sample_steps", default=8, min=1, max=200, optional=True,
                     tooltip="Sampling steps of each check picture (euler, CFG off)."),
    ]


def extra_options_input(example: str) -> io.String.Input:
    return io.String.Input("extra_options", multiline=True, default="",
                           tooltip=f"Any other sd-scripts training or dataset option as TOML lines, e.g. {example}. "
                                   "Loss masks: alpha_mask = true (the images' alpha channel) or masked_loss = true "
                                   "(mask images: a dataset TOML's mask_dir, or conditioning_data_dir when training "
                                   "without guides). An option this pack does not implement is refused with its name.")


def parse_extra_options(text: str, dataset: list, node: str) -> tuple[dict, list]:
    """extra_options TOML -> (training options, the dataset with the dataset options in it applied)."""
    try:
        options = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"extra_options must be TOML lines like `lr_scheduler_num_cycles = 3`: {e}") from e
    return apply_dataset_options(dataset, options, node)

PROMPT_FILE_SUFFIXES = (".txt", ".toml", ".json")


def if_exists_input() -> io.Combo.Input:
    return io.Combo.Input("if_exists", options=list(IF_EXISTS), default=IF_EXISTS[0],
                          tooltip="When output_name already exists: new name (keeps it, writes name_2 ...), resume (continue "
                                  "from its last saved state), or overwrite (replaces it).")


def resolve_path(value: str, what: str) -> Path:
    """A user-typed path: absolute as given, relative against ComfyUI's input folder (not the
    folder ComfyUI happened to be started from); it must exist and be readable by graphs."""
    import folder_paths

    if not value.strip():
        raise DatasetError(f"{what}: no path given.")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    check_readable(path, what)
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist (relative paths are read from ComfyUI's input folder).")
    return path


def check_dataset_paths(datasets) -> None:
    """The folders and files a dataset (e.g. from a TOML) names must be readable by graphs too."""
    for dataset in datasets:
        for subset in dataset.subsets:
            for what in ("image_dir", "metadata_file", "conditioning_data_dir"):
                path = getattr(subset, what, None)
                if path is not None:
                    check_readable(path, what)


def _prompt_text(value: str | None) -> str | None:
    """sample_prompts typed as a file name -> the file's lines (read under the graph read rule)."""
    if not value or "\n" in value.strip() or Path(value.strip()).suffix.lower() not in PROMPT_FILE_SUFFIXES:
        return value
    return resolve_path(value, "sample_prompts file").read_text(encoding="utf-8")


def plan_run(cfg: TrainConfig, default_dir: str, if_exists: str, datasets) -> tuple[TrainConfig, Path]:
    """(config to train with, output folder): checked before any work starts."""
    out_dir = check_writable(cfg.output_dir or default_dir)
    check_dataset_paths(datasets)
    name, state = plan_output(out_dir, cfg.output_name, if_exists)
    return cfg.replace(output_name=name, resume=str(state) if state else cfg.resume,
                       sample_prompts=_prompt_text(cfg.sample_prompts)), out_dir


def file_name_in(path: Path, folders: tuple[str, ...]) -> str:
    """The name a loader lists for `path` (relative to one of `folders`' roots)."""
    import folder_paths

    for folder in folders:
        for root in folder_paths.get_folder_paths(folder):
            try:
                return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                continue
    log.warning("%s is outside the %s folders: the loaders will not list it", path, " and ".join(folders))
    return str(path)


def saved_files_text(saved: list[Path], folders: tuple[str, ...]) -> str:
    """The files a run made (those still on disk after save_last_n_* pruning), one per line."""
    return "\n".join(file_name_in(p, folders) for p in saved if Path(p).exists())


def images_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """IMAGEs of possibly different sizes -> one batch, each padded (black) to the largest."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    out = torch.zeros(len(images), h, w, 3)
    for k, img in enumerate(images):
        out[k, : img.shape[1], : img.shape[2]] = img[0]
    return out


def last_samples(result) -> torch.Tensor:
    return images_batch(result.samples[-1][1]) if result.samples else torch.zeros(1, 64, 64, 3)


class NodeProgress:
    """A training run as the node shows it: the bar over the steps (with the latest samples as
    its preview), and one text line per phase (caching latents, caching text, training, saving,
    sampling, held-out evaluation)."""

    def __init__(self, node_id, total_steps: int):
        import comfy.utils

        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)
        self.preview = None
        self.suffix = ""  # appended to the step text (e.g. the control gap)

    def text(self, text: str) -> None:
        from server import PromptServer

        if PromptServer.instance is not None and self.node_id is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)

    def _step(self, step: int, total: int, loss: float) -> None:
        self.bar.update_absolute(step, total, self.preview)
        self.preview = None
        self.text(f"step {step}/{total}  loss {loss:.4f}{self.suffix}")

    def _samples(self, step: int, images: list[torch.Tensor]) -> None:
        from PIL import Image

        grid = images_batch(images).movedim(0, 1).reshape(max(i.shape[1] for i in images), -1, 3)  # side by side
        self.preview = ("JPEG", Image.fromarray((grid.clamp(0, 1) * 255).byte().numpy()), 512)

    def hooks(self, **more) -> TrainHooks:
        import comfy.model_management

        return TrainHooks(progress=self._step, samples=self._samples, phase=self.text,
                          check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted, **more)
