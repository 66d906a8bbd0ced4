"""Train a LoRA, ControlNet-LLLite, ControlNet, Textual Inversion or the whole model without the UI, with the same engine and options as the nodes.

    python scripts/train.py --config_file config.toml --dataset_config dataset.toml [--trainer lllite|controlnet|ti|full]
    torchrun --nproc_per_node 2 scripts/train.py ...     (data-parallel, one process per GPU)

config.toml is an sd-scripts training config (sections are flattened, as sd-scripts does);
pretrained_model_name_or_path names the checkpoint (.safetensors / .ckpt), output_dir
defaults to ComfyUI's loras folder (embeddings for ti, checkpoints for full). Options given on
the command line override the file. --trainer ti reads train_textual_inversion.py's token_string,
init_word, num_vectors_per_token, use_object_template / use_style_template and weights from the
file; --trainer full reads train_db.py's / sdxl_train.py's train_text_encoder, learning_rate_te
(learning_rate_te1), learning_rate_te2, block_lr, and save_lora_dim.
ComfyUI is imported from COMFYUI_DIR, or from the pack's own .comfyui/ComfyUI.
Exit status: 0 trained, 1 bad input (the message names it), 130 interrupted (files saved
so far are kept; resume with --resume <name>-state.pt).
Under torchrun every process trains its slice of each global batch (per-process batch size
x processes), gradients are averaged, and process 0 alone prints, writes files and samples.
"""
import argparse
import importlib
import logging
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "lllite_kit"


def bootstrap_comfyui() -> None:
    """Put ComfyUI on sys.path and make the pack importable as a package (without running its
    node registration)."""
    comfy_dir = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI").resolve()
    if not (comfy_dir / "comfy").is_dir():
        sys.exit(f"train: no ComfyUI at {comfy_dir}: set COMFYUI_DIR to a ComfyUI folder (the one holding main.py)")
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    if PACK not in sys.modules:
        package = types.ModuleType(PACK)
        package.__path__ = [str(REPO)]
        sys.modules[PACK] = package
    from lllite_kit.training.distributed import pin_local_device

    pin_local_device()  # before anything initialises CUDA
    import torch
    from comfy.cli_args import args

    # as `main.py --cpu`: ComfyUI's model management refuses to start without a GPU otherwise
    args.cpu = args.cpu or not torch.cuda.is_available()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", required=True, help="sd-scripts-style training config TOML")
    p.add_argument("--dataset_config", help="sd-scripts dataset TOML (else train_data_dir from the config)")
    p.add_argument("--pretrained_model_name_or_path", help="checkpoint file")
    p.add_argument("--output_dir")
    p.add_argument("--output_name")
    p.add_argument("--max_train_steps", type=int)
    p.add_argument("--max_train_epochs", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", help="a <name>-state.pt written next to a saved LoRA")
    p.add_argument("--trainer", choices=sorted(TRAINERS), default="lora", help="what to train (default lora)")
    p.add_argument("--progress_json", action="store_true",
                   help="print progress, phases and saved files as JSON lines prefixed with 'lllite-kit ' (for the TrainDistributed node)")
    p.add_argument("--stop_file", help="stop (all processes, at the same step) once this file exists: how a caller cancels")
    p.add_argument("--allow_module", action="append", default=[], metavar="PACKAGE",
                   help="also import optimizer_type / lr_scheduler classes (module.Class) from PACKAGE; repeatable. "
                        "Without it only the known optimizer packages are imported")
    return p.parse_args(argv)


# --trainer -> "module:function" under lllite_kit.training; each takes (cfg, model, clip, vae, datasets, **keywords)
# and trains with the config's options alone (ControlNet with its defaults: sd_locked, from the base U-Net)
TRAINERS = {"lora": "session:train_lora", "lllite": "session:train_lllite", "controlnet": "controlnet.train:train_controlnet",
            "ti": "textual_inversion:train_textual_inversion", "full": "full_model:train_full_model"}
# trainers with options that are not TrainConfig fields: their options class, and the config-file
# keys (sd-scripts' names) that become its fields; those keys are taken out before TrainConfig sees the file
TRAINER_OPTIONS = {
    "ti": ("textual_inversion:TextualInversionOptions",
           {"token_string": "token_string", "init_word": "init_word", "num_vectors_per_token": "num_vectors_per_token",
            "weights": "start_from", "use_object_template": "templates", "use_style_template": "templates"}),
    "full": ("full_model:FullModelOptions",
             {"train_text_encoder": "train_text_encoder", "learning_rate_te": "learning_rate_te1",
              "learning_rate_te1": "learning_rate_te1", "learning_rate_te2": "learning_rate_te2", "block_lr": "block_lr",
              "save_lora_dim": "save_lora_dim", "fsdp": "fsdp"}),
}
OUTPUT_FOLDERS = {"ti": "embeddings", "full": "checkpoints"}  # ComfyUI's folder a trainer's files go to by default


def trainer_options(trainer: str, values: dict) -> tuple[list, dict]:
    """([the trainer's options object] or [], the remaining TrainConfig values)."""
    if trainer not in TRAINER_OPTIONS:
        return [], values
    class_path, keys = TRAINER_OPTIONS[trainer]
    rest = {k: v for k, v in values.items() if k not in keys}
    fields = {}
    for key, field in keys.items():
        if key in values and field == "templates":  # use_object_template / use_style_template = true
            if values[key]:
                fields["templates"] = key.split("_")[1]
        elif key in values:
            fields[field] = values[key]
    if values.get("use_object_template") and values.get("use_style_template"):
        raise ValueError("use_object_template and use_style_template exclude each other")
    if trainer == "ti" and "token_string" not in fields:
        raise ValueError("--trainer ti needs token_string in the config file (the word that names the embedding)")
    module, name = class_path.split(":")
    return [getattr(importlib.import_module(f"lllite_kit.training.{module}"), name)(**fields)], rest


def _default_folder(trainer: str) -> str | None:
    import folder_paths

    return folder_paths.get_folder_paths(OUTPUT_FOLDERS[trainer])[0] if trainer in OUTPUT_FOLDERS else None


def load_models(cfg):
    """(MODEL, CLIP, VAE, model file name) from the config's checkpoint (and vae)."""
    import comfy.sd
    import comfy.utils
    from safetensors import SafetensorError

    ckpt = cfg.pretrained_model_name_or_path
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"pretrained_model_name_or_path: checkpoint file not found: {ckpt!r}")
    if cfg.vae and not Path(cfg.vae).is_file():
        raise FileNotFoundError(f"vae: file not found: {cfg.vae!r}")
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
        if cfg.vae:
            vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(cfg.vae))
    except (OSError, RuntimeError, SafetensorError) as e:  # unreadable file, or a model ComfyUI cannot detect
        raise ValueError(f"{ckpt}{' or ' + cfg.vae if cfg.vae else ''}: not a readable checkpoint ({e})") from e
    if model is None or clip is None:
        raise ValueError(f"{ckpt}: not a full Stable Diffusion checkpoint (U-Net and text encoders are needed)")
    return model, clip, vae, Path(ckpt).name


def _save_png(path: Path, image) -> None:
    """image: (H, W, 3) in [0, 1]; written atomically like every file the pack writes."""
    import numpy as np
    from PIL import Image

    from lllite_kit.files.atomic import write_atomic

    pixels = Image.fromarray((image.clamp(0, 1).numpy() * 255).astype(np.uint8))
    write_atomic(path, lambda tmp: pixels.save(tmp, format="PNG"), "image")


def _save_images(folder: Path, name: str, step: int, images) -> list[Path]:
    files = [folder / f"{name}_{step:06d}_{i:02d}.png" for i in range(len(images))]
    for file, img in zip(files, images):
        _save_png(file, img[0])
    return files


def _report(kind: str, **fields) -> None:
    """One machine-readable line for the TrainDistributed node (--progress_json)."""
    import json

    print("lllite-kit " + json.dumps({"kind": kind, **fields}), flush=True)


def _hooks(args, cfg, out_dir: Path, is_main: bool, last_samples: list):
    """The run's hooks; last_samples receives the newest round of sample files."""
    from lllite_kit.training.engine import TrainHooks

    if not is_main:  # the other processes train silently; process 0 speaks for the run
        return TrainHooks()

    def progress(step, total, loss):
        if args.progress_json:
            _report("progress", step=step, total=total, loss=loss)
        elif step == total or step % max(1, total // 100) == 0:
            print(f"step {step}/{total}  loss {loss:.4f}", flush=True)

    def samples(step, images):
        last_samples[:] = _save_images(out_dir / "sample", cfg.output_name, step, images)
        if args.progress_json:
            _report("samples", step=step, files=[str(f) for f in last_samples])

    def check_interrupt():
        if args.stop_file and Path(args.stop_file).exists():
            raise KeyboardInterrupt(f"stop file {args.stop_file} appeared")

    phase = (lambda text: _report("phase", text=text)) if args.progress_json else None
    return TrainHooks(progress=progress, samples=samples, phase=phase, check_interrupt=check_interrupt)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    bootstrap_comfyui()
    from lllite_kit.training import distributed, session
    from lllite_kit.training.class_allowlist import allow_packages
    from lllite_kit.training.comfy_bridge import default_output_dir, latent_cache_dir
    from lllite_kit.training.config import config_from_dict, flatten_sections, read_toml
    from lllite_kit.training.loss_curve import draw_loss_curve

    overrides = {k: v for k, v in vars(args).items() if k not in ("config_file", "allow_module", "trainer", "progress_json", "stop_file")}
    try:
        group = distributed.join_from_environment()
    except (RuntimeError, ValueError) as e:
        print(f"train: could not join the torchrun job: {e}", file=sys.stderr)
        return 1
    if not group.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    last_samples: list[Path] = []
    try:
        with allow_packages(args.allow_module):  # command line only: graphs never widen the list
            values = flatten_sections(read_toml(args.config_file))
            values.update({k: v for k, v in overrides.items() if v is not None})
            options, values = trainer_options(args.trainer, values)
            cfg = config_from_dict(values, args.config_file)
            datasets = session.datasets_from_config(cfg)
            model, clip, vae, model_name = load_models(cfg)
            out_dir = Path(cfg.output_dir or _default_folder(args.trainer) or default_output_dir())
            module, function = TRAINERS[args.trainer].split(":")
            train = getattr(importlib.import_module(f"lllite_kit.training.{module}"), function)
            result = train(cfg, model, clip, vae, datasets, *options, output_dir=out_dir, model_name=model_name,
                           hooks=_hooks(args, cfg, out_dir, group.is_main, last_samples), latent_cache_dir=latent_cache_dir())
    except KeyboardInterrupt:
        print("train: interrupted; files saved so far are kept (resume with --resume <file>-state.pt)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as e:  # bad input or divergence: the message says which
        print(f"train: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.leave()
    if not group.is_main:
        return 0
    curve = draw_loss_curve({"loss": result.losses})
    _save_png(out_dir / f"{cfg.output_name}_loss.png", curve[0])
    if args.progress_json:
        _report("done", final=str(result.final_path), saved=[str(p) for p in result.saved], losses=result.losses,
                curve=str(out_dir / f"{cfg.output_name}_loss.png"), samples=[str(f) for f in last_samples])
    print(f"train: saved {result.final_path} after {result.steps} steps ({len(result.saved)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
