"""LoRA tools without the UI: the same library as the LoRA tools nodes.

    python scripts/lora_tools.py merge a.safetensors b.safetensors --ratios 1 0.5 --mode svd --new_rank 16 --output_name ab
    python scripts/lora_tools.py resize my.safetensors --new_rank 8 [--dynamic_method sv_fro --dynamic_param 0.9]
    python scripts/lora_tools.py extract --model_org base.safetensors --model_tuned tuned.safetensors --dim 32
    python scripts/lora_tools.py dylora-cut dylora.safetensors --rank 8
    python scripts/lora_tools.py inspect my.safetensors [--chart my_blocks.png]
    python scripts/lora_tools.py resize my_dora.safetensors --new_rank 8 --base sd_xl_base_1.0.safetensors

A LoRA argument is a path, or a name in ComfyUI's loras folder. Files are written to
--output_dir (default: ComfyUI's loras folder) as --output_name.safetensors; a taken name
gets _2, _3 ... unless --overwrite. A DoRA file's difference depends on the model it applies
to: merge, resize and inspect take it with --base (that checkpoint, a .safetensors file). ComfyUI is imported from COMFYUI_DIR, or from the pack's
own .comfyui/ComfyUI. Exit status: 0 done, 1 bad input (the message names it).
"""
import argparse
import sys
from pathlib import Path

from train import bootstrap_comfyui

PRECISIONS = ("fp16", "bf16", "float")


def _output_args(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--output_dir", help="folder to write to (default: ComfyUI's loras folder)")
    p.add_argument("--output_name", default=default_name, help="file name without extension")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    p.add_argument("--save_precision", choices=PRECISIONS, default="fp16")


def _base_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="only for DoRA files: the checkpoint (.safetensors) they apply to")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="tool", required=True)

    p = sub.add_parser("merge", help="merge LoRAs: concat (exact), weighted (sd-scripts merge_lora), svd")
    p.add_argument("loras", nargs="+")
    p.add_argument("--ratios", type=float, nargs="+", help="one per LoRA (default 1)")
    p.add_argument("--block_ratios", nargs="+", help="one per LoRA: a preset (ALL, OUTD ...), numbers "
                   "'1,0,...' (12/17/20/26 values) or '-' for none")
    p.add_argument("--mode", choices=("concat", "weighted", "svd"), default="concat")
    p.add_argument("--new_rank", type=int, default=4, help="svd: rank of the result")
    p.add_argument("--new_conv_rank", type=int, help="svd: rank of 3x3 convs (default new_rank)")
    p.add_argument("--clamp_quantile", type=float, default=0.99, help="svd: clamp the factors at this quantile; 1: no clamping")
    p.add_argument("--svd_method", choices=("exact", "lowrank"), default="exact")
    _base_arg(p)
    _output_args(p, "merged")

    p = sub.add_parser("resize", help="change a LoRA's rank (sd-scripts resize_lora)")
    p.add_argument("lora")
    p.add_argument("--new_rank", type=int, required=True, help="rank (the cap with --dynamic_method)")
    p.add_argument("--new_conv_rank", type=int)
    p.add_argument("--dynamic_method", choices=("sv_ratio", "sv_fro", "sv_cumulative"))
    p.add_argument("--dynamic_param", type=float)
    p.add_argument("--verbose", action="store_true", help="one line per module")
    _base_arg(p)
    _output_args(p, "resized")

    p = sub.add_parser("extract", help="a LoRA from two checkpoints (sd-scripts extract_lora_from_models)")
    p.add_argument("--model_org", required=True, help="the base checkpoint")
    p.add_argument("--model_tuned", required=True, help="the fine-tuned checkpoint")
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--conv_dim", type=int, help="rank of 3x3 convs (default: none)")
    p.add_argument("--clamp_quantile", type=float, default=0.99, help="1: no clamping")
    p.add_argument("--min_diff", type=float, default=0.01)
    p.add_argument("--no_text_encoder", action="store_true", help="U-Net only")
    p.add_argument("--svd_method", choices=("exact", "lowrank"), default="lowrank")
    _output_args(p, "extracted")

    p = sub.add_parser("dylora-cut", help="a DyLoRA cut to a rank (sd-scripts extract_lora_from_dylora)")
    p.add_argument("lora")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--unit", type=int, help="DyLoRA unit (default: from the file's metadata)")
    _output_args(p, "dylora_cut")

    p = sub.add_parser("inspect", help="metadata, ranks/alphas and norm per block")
    p.add_argument("lora")
    p.add_argument("--chart", help="also write the per-block norm bar chart to this PNG")
    _base_arg(p)
    return parser.parse_args(argv)


def lora_path(name: str) -> str:
    import folder_paths

    if Path(name).is_file():
        return name
    found = folder_paths.get_full_path("loras", name) or folder_paths.get_full_path("loras", f"{name}.safetensors")
    if found is None:
        raise FileNotFoundError(f"LoRA not found: {name!r} is neither a file nor a name in the loras folder "
                                f"({'; '.join(folder_paths.get_folder_paths('loras'))})")
    return found


def output_path(args) -> Path:
    import folder_paths

    from lllite_kit.files.names import check_output_name
    from lllite_kit.training.output_files import plan_output

    check_output_name(args.output_name, "--output_name")
    out_dir = Path(args.output_dir or folder_paths.get_folder_paths("loras")[0])
    name, _ = plan_output(out_dir, args.output_name, "overwrite" if args.overwrite else "new name")
    return out_dir / f"{name}.safetensors"


def save(lora, args) -> Path:
    from lllite_kit.training.lora.file import SAVE_PRECISIONS

    path = output_path(args)
    lora.save(str(path), SAVE_PRECISIONS[args.save_precision])
    return path


def base_weights(path: str | None):
    """kohya module name -> layer weight of the --base checkpoint (DoRA files need it), or None."""
    if path is None:
        return None
    import comfy.sd

    from lllite_kit.training.lora.tools.base_weights import ModelWeights

    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        raise FileNotFoundError(f"--base must be a .safetensors checkpoint file: {path!r}")
    try:
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)
    except RuntimeError as e:  # core's "Could not detect model type"
        raise ValueError(f"--base {path}: {e}") from None
    return ModelWeights(model, clip)


def checkpoint_weights(path: str, conv: bool, text_encoders: bool):
    """(family, kohya module name -> weight) of a checkpoint file, loaded by ComfyUI."""
    import comfy.sd

    from lllite_kit.model_family import model_family
    from lllite_kit.training.lora.tools import extract

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=text_encoders)
    unet = model.model.diffusion_model
    family = {"sdxl": "sdxl", "sd15": "sd15", "sd2": "sd15"}.get(model_family(model))
    if family is None:
        raise ValueError(f"{path}: not an SD1.x/SD2.x or SDXL checkpoint")
    encoders = None
    if clip is not None:
        te = clip.cond_stage_model
        encoders = {"te1": te.clip_l, "te2": te.clip_g} if family == "sdxl" else {"te": te.clip_l}
    return family, extract.model_weights(unet, encoders, family, model.model.model_config.unet_config, conv)


def run(args) -> str:
    from lllite_kit.training.lora.tools import dylora, extract, merge, resize
    from lllite_kit.training.lora.tools import inspect as inspect_lora
    from lllite_kit.training.lora.tools.common import LoRA

    if args.tool != "inspect":
        output_path(args)  # a bad name or folder fails before any work
    name = Path(args.output_name).name if args.tool != "inspect" else None
    base = base_weights(getattr(args, "base", None))
    if args.tool == "merge":
        loras = [LoRA.load(lora_path(n), base) for n in args.loras]
        blocks = [None if b == "-" else b for b in args.block_ratios] if args.block_ratios else None
        if args.mode == "concat":
            merged = merge.merge_concat(loras, args.ratios, blocks, name=name)
        elif args.mode == "weighted":
            merged = merge.merge_weighted(loras, args.ratios, blocks, name=name)
        else:
            merged = merge.merge_svd(loras, args.ratios, args.new_rank, args.new_conv_rank, blocks,
                                     args.clamp_quantile if args.clamp_quantile < 1 else None, args.svd_method, name)
        return f"saved {save(merged, args)}"
    if args.tool == "resize":
        source = lora_path(args.lora)
        resized, reports = resize.resize(LoRA.load(source, base), args.new_rank, args.new_conv_rank, args.dynamic_method,
                                         args.dynamic_param, name=name)
        path = save(resized, args)
        text = resize.report_text(reports, Path(source).stat().st_size, path.stat().st_size, per_module=args.verbose)
        return f"{text}\nsaved {path}"
    if args.tool == "extract":
        conv = args.conv_dim is not None
        family, base = checkpoint_weights(args.model_org, conv, not args.no_text_encoder)
        family_tuned, tuned = checkpoint_weights(args.model_tuned, conv, not args.no_text_encoder)
        if family_tuned != family:
            raise ValueError(f"--model_org is {family}, --model_tuned is {family_tuned}")
        lora, errors = extract.extract(base, tuned, args.dim, args.conv_dim,
                                       args.clamp_quantile if args.clamp_quantile < 1 else None, args.min_diff,
                                       args.svd_method, family, name=name,
                                       sources=(Path(args.model_org).name, Path(args.model_tuned).name))
        worst = max(errors.values(), default=0.0)
        return f"{len(lora.modules)} modules, worst relative error {worst:.4g}\nsaved {save(lora, args)}"
    if args.tool == "dylora-cut":
        return f"saved {save(dylora.cut(LoRA.load(lora_path(args.lora)), args.rank, args.unit, name=name), args)}"
    info = inspect_lora.inspect(LoRA.load(lora_path(args.lora), base))
    lines = [f"{k}: {v}" for k, v in sorted(info["metadata"].items())]
    lines += [f"base model {k}: {v}" for k, v in info["base_model_hash"].items()]
    lines += [f"tag {t}: {c}" for t, c in info["tags"].items()]
    for label, b in info["blocks"].items():
        lines.append(f"{label:<6} modules {b['modules']:>3}  ranks {b['ranks']}  alphas {b['alphas']}  norm {b['norm']:.4g}")
    if args.chart:
        lines.append(f"chart {write_chart(info, args.chart, Path(args.lora).name)}")
    return "\n".join(lines)


def write_chart(info: dict, path: str, title: str) -> str:
    import numpy as np
    from PIL import Image

    from lllite_kit.files.atomic import write_atomic
    from lllite_kit.training.lora.tools.chart import bar_chart

    chart = bar_chart({label: b["norm"] for label, b in info["blocks"].items()}, f"{title}: norm per block")
    pixels = Image.fromarray((chart[0].numpy() * 255).astype(np.uint8))
    write_atomic(path, lambda tmp: pixels.save(tmp, format="PNG"), "image")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    bootstrap_comfyui()
    try:
        print(run(args))
    except (ValueError, FileNotFoundError, OSError) as e:  # bad input: the message says which
        print(f"lora_tools {args.tool}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
