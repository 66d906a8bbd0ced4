"""LoRA tools as nodes: load with per-block weights, inspect, merge, resize, extract from two
models, cut a DyLoRA. Forms over training/lora/tools (the library scripts/lora_tools.py runs
too); files are read from and written to ComfyUI's loras folder."""
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..files.names import check_output_name
from ..model_family import model_family
from ..training.lora.file import SAVE_PRECISIONS
from ..training.lora.tools import block_weights, dylora, extract, merge, resize
from ..training.lora.tools.base_weights import ModelWeights
from ..training.lora.tools import inspect as inspect_lora
from ..training.lora.tools.chart import bar_chart
from ..training.lora.tools.common import SVD_METHODS, LoRA
from ..training.output_files import plan_output

CATEGORY = "LLLite Kit/LoRA tools"
CUSTOM = "custom"
# The block-weight presets of A1111's LoRA Block Weight, in its order; "custom" reads the vector.
PRESETS = [CUSTOM, *dict.fromkeys(name for table in block_weights.PRESETS.values() for name in table)]
IF_EXISTS = ("new name", "overwrite")  # a tool has no run to resume
NONE = "none"
DYNAMIC = (NONE, "sv_ratio", "sv_fro", "sv_cumulative")


def lora_files() -> list[str]:
    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


def load(name: str, model=None, clip=None) -> LoRA:
    """model/clip: what a DoRA file's difference is computed on (its base weights)."""
    base = ModelWeights(model, clip) if model is not None or clip is not None else None
    return LoRA.load(folder_paths.get_full_path_or_raise("loras", name), base)


def base_inputs() -> list:
    return [io.Model.Input("model", optional=True,
                           tooltip="Only for DoRA files: the model they apply to (its weights enter a DoRA's difference)."),
            io.Clip.Input("clip", optional=True,
                          tooltip="Only for DoRA files with text-encoder modules: the text encoders they apply to.")]


def unet_family(model) -> str:
    """"sdxl" or "sd15" (SD2.x LoRAs use SD1.x's module names) of a MODEL."""
    family = {"sdxl": "sdxl", "sd15": "sd15", "sd2": "sd15"}.get(model_family(model))
    if family is None:
        raise ValueError("LoRA tools work on SD1.x/SD2.x and SDXL models only; this model is neither.")
    return family


def output_path(output_name: str, if_exists: str) -> Path:
    """Where a tool writes `output_name` in the loras folder: a free name unless overwrite is chosen."""
    check_output_name(output_name)
    out_dir = Path(folder_paths.get_folder_paths("loras")[0])
    name, _ = plan_output(out_dir, output_name, if_exists)
    return out_dir / f"{name}.safetensors"


def save(lora: LoRA, path: Path, precision: str) -> str:
    """Writes `lora` (atomically, with its ss_* metadata); returns its name in the loras list."""
    lora.save(str(path), SAVE_PRECISIONS[precision])
    return path.relative_to(folder_paths.get_folder_paths("loras")[0]).as_posix()


def output_inputs(default_name: str) -> list:
    return [
        io.String.Input("output_name", default=default_name,
                        tooltip="File name (no extension) in the loras folder; subfolders allowed (people/anna)."),
        io.Combo.Input("if_exists", options=list(IF_EXISTS), default=IF_EXISTS[0],
                       tooltip="When output_name exists: new name (keeps it, writes name_2 ...) or overwrite (replaces it)."),
        io.Combo.Input("save_precision", options=list(SAVE_PRECISIONS), default="fp16",
                       tooltip="Data type of the saved weights."),
    ]


def lora_input(name: str, tooltip: str, optional: bool = False) -> io.Combo.Input:
    options = ([NONE] if optional else []) + lora_files()
    return io.Combo.Input(name, options=options, tooltip=tooltip + " (a .safetensors file in models/loras)")


def method_input(default: str) -> io.Combo.Input:
    return io.Combo.Input("svd_method", options=list(SVD_METHODS), default=default,
                          tooltip="exact: full SVD; lowrank: randomized SVD, much faster on large layers, near-exact.")


def outputs() -> list:
    # "*": the one output type that links to core LoraLoader's lora_name list (as the trainer's)
    return [io.AnyType.Output(display_name="lora_name", tooltip="The written file's name in the loras folder."),
            io.String.Output(display_name="report", tooltip="What was done, per module or block.")]


class LoraLoaderBlockWeight(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_LoraLoaderBlockWeight",
            display_name="Load LoRA with block weights (LLLite Kit)",
            category=CATEGORY,
            description="Core's LoraLoader with one weight per U-Net block (A1111 LoRA Block Weight): SD1.5 17 or 26 "
            "values, SDXL 12 or 20, BASE first (the text encoders). Patches through core's LoRA patching, so it "
            "stacks with every other LoRA node and LLLite. kohya, LoHa, LoKr and DoRA files.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA is applied to."),
                io.Clip.Input("clip", tooltip="The text encoders the LoRA is applied to (BASE weight)."),
                lora_input("lora_name", "The LoRA"),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Overall strength on the diffusion model, times each block's weight."),
                io.Float.Input("strength_clip", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Overall strength on the text encoders, times the BASE weight."),
                io.Combo.Input("preset", options=PRESETS, default="ALL",
                               tooltip="A1111's named block vectors (as SD1.5 17-value / SDXL 12-value vectors; blocks they do "
                                       "not name keep 1); custom uses block_vector."),
                io.String.Input("block_vector", default="",
                                tooltip="Used when preset is custom: comma-separated weights BASE,IN..,M00,OUT.. "
                                        "(SD1.5 17 or 26 values, SDXL 12 or 20); a weight of 0 leaves that block unpatched."),
            ],
            outputs=[io.Model.Output(tooltip="The patched diffusion model."),
                     io.Clip.Output(tooltip="The patched text encoders.")],
        )

    @classmethod
    def execute(cls, model, clip, lora_name, strength_model, strength_clip, preset, block_vector) -> io.NodeOutput:
        import comfy.sd
        import comfy.utils

        if strength_model == 0 and strength_clip == 0:
            return io.NodeOutput(model, clip)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        tensors, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        spec = block_vector if preset == CUSTOM else preset
        # DoRA modules: a patch per block weight, at strength x weight (core scales DoRA's whole change)
        scaled, dora = block_weights.split_dora(tensors, spec, unet_family(model))
        for weight, part in ([(1.0, scaled)] if scaled else []) + dora:
            model, clip = comfy.sd.load_lora_for_models(model, clip, part, strength_model * weight,
                                                        strength_clip * weight, lora_metadata=metadata)
        return io.NodeOutput(model, clip)


def inspect_text(info: dict) -> str:
    hashes = ", ".join(f"{k} {v}" for k, v in info["base_model_hash"].items())
    lines = [f"base model: {hashes or 'unknown'}"]
    if info.get("tags"):
        lines.append("dataset tags: " + ", ".join(f"{t} ({n})" for t, n in info["tags"].items()))
    lines.append("")
    lines.append(f"{'block':<10}{'modules':>8}  {'ranks':<12}{'alphas':<14}{'norm':>10}")
    for label, b in info["blocks"].items():
        ranks = ",".join(str(r) for r in b["ranks"])
        alphas = ",".join(f"{a:g}" for a in b["alphas"])
        lines.append(f"{label:<10}{b['modules']:>8}  {ranks:<12}{alphas:<14}{b['norm']:>10.4g}")
    lines.append("")
    lines += [f"{k}: {v}" for k, v in sorted(info["metadata"].items())]
    return "\n".join(lines)


class InspectLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_InspectLoRA",
            display_name="Inspect LoRA (LLLite Kit)",
            category=CATEGORY,
            description="A LoRA file's metadata (training options, dataset tags with counts, base model hash), "
            "ranks and alphas per block, and each block's weight-difference norm as a bar chart.",
            is_output_node=True,
            inputs=[lora_input("lora_name", "The LoRA to inspect"), *base_inputs()],
            outputs=[io.String.Output(display_name="text", tooltip="Metadata and the per-block table."),
                     io.Image.Output(display_name="block_norms", tooltip="Frobenius norm of each block's weight difference.")],
        )

    @classmethod
    def execute(cls, lora_name, model=None, clip=None) -> io.NodeOutput:
        info = inspect_lora.inspect(load(lora_name, model, clip))
        chart = bar_chart({label: b["norm"] for label, b in info["blocks"].items()},
                          f"{lora_name}: norm of the weight difference per block")
        return io.NodeOutput(inspect_text(info), chart, ui=ui.PreviewImage(chart, cls=cls))


class MergeLoRAs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        ratio_inputs = []
        for i in (1, 2, 3):
            ratio_inputs += [
                lora_input(f"lora_{i}", f"LoRA {i}", optional=i == 3),
                io.Float.Input(f"ratio_{i}", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip=f"Weight of LoRA {i} in the merge."),
                io.String.Input(f"block_ratios_{i}", default="",
                                tooltip=f"Optional per-block weights of LoRA {i}: a preset (ALL, OUTD ...) or "
                                        "comma-separated values as in the block-weight loader; empty: all 1."),
            ]
        return io.Schema(
            node_id="LLLiteKit_MergeLoRAs",
            display_name="Merge LoRAs (LLLite Kit)",
            category=CATEGORY,
            description="Merges two or three LoRAs into one file: concat (exact, rank = sum of ranks), weighted "
            "(sd-scripts merge_lora.py, equal ranks), or svd (sd-scripts svd_merge_lora.py, to new_rank).",
            is_output_node=True,
            inputs=[
                *ratio_inputs,
                io.Combo.Input("mode", options=["concat", "weighted", "svd"], default="concat",
                               tooltip="concat: exact sum of the weight differences; weighted: sd-scripts' merge of "
                                       "equal-rank LoRAs; svd: sum then truncated SVD to new_rank."),
                io.Int.Input("new_rank", default=16, min=1, max=1024, tooltip="svd: rank of the result."),
                io.Int.Input("new_conv_rank", default=0, min=0, max=1024,
                             tooltip="svd: rank of 3x3 conv modules; 0: new_rank."),
                io.Float.Input("clamp_quantile", default=0.99, min=0.0, max=1.0, step=0.001,
                               tooltip="svd: clamp the factors at this quantile of their values (sd-scripts); 1: no clamping."),
                method_input("exact"),
                *output_inputs("merged"),
                *base_inputs(),
            ],
            outputs=outputs(),
        )

    @classmethod
    def execute(cls, lora_1, ratio_1, block_ratios_1, lora_2, ratio_2, block_ratios_2, lora_3, ratio_3,
                block_ratios_3, mode, new_rank, new_conv_rank, clamp_quantile, svd_method, output_name, if_exists,
                save_precision, model=None, clip=None) -> io.NodeOutput:
        path = output_path(output_name, if_exists)  # a bad name fails before any work
        picked = [(n, r, b.strip() or None) for n, r, b in ((lora_1, ratio_1, block_ratios_1),
                  (lora_2, ratio_2, block_ratios_2), (lora_3, ratio_3, block_ratios_3)) if n != NONE]
        loras = [load(n, model, clip) for n, _, _ in picked]
        ratios = [r for _, r, _ in picked]
        blocks = [b for _, _, b in picked]
        name = Path(output_name).name
        if mode == "concat":
            merged = merge.merge_concat(loras, ratios, blocks, name=name)
        elif mode == "weighted":
            merged = merge.merge_weighted(loras, ratios, blocks, name=name)
        else:
            merged = merge.merge_svd(loras, ratios, new_rank, new_conv_rank or None, blocks,
                                     clamp_quantile if clamp_quantile < 1 else None, svd_method, name)
        written = save(merged, path, save_precision)
        report = f"{mode} merge of " + ", ".join(f"{n} x {r:g}" + (f" blocks {b}" if b else "") for n, r, b in picked)
        return io.NodeOutput(written, f"{written}: {report}", ui=ui.PreviewText(f"{written}: {report}"))


class ResizeLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_ResizeLoRA",
            display_name="Resize LoRA rank (LLLite Kit)",
            category=CATEGORY,
            description="Changes a LoRA's rank by SVD (sd-scripts resize_lora.py): a fixed rank, or per module by "
            "sv_ratio, sv_fro or sv_cumulative; reports the rank kept and the share of the norm retained.",
            is_output_node=True,
            inputs=[
                lora_input("lora_name", "The LoRA to resize"),
                io.Int.Input("new_rank", default=8, min=1, max=1024,
                             tooltip="The rank (with a dynamic method: the largest rank allowed)."),
                io.Int.Input("new_conv_rank", default=0, min=0, max=1024, tooltip="Rank of 3x3 conv modules; 0: new_rank."),
                io.Combo.Input("dynamic_method", options=list(DYNAMIC), default=NONE,
                               tooltip="none: fixed rank; sv_ratio: keep singular values above max/param; sv_fro: keep "
                                       "param of the Frobenius norm; sv_cumulative: keep param of the singular-value sum."),
                io.Float.Input("dynamic_param", default=0.9, min=0.0, max=1000.0, step=0.01,
                               tooltip="The dynamic method's parameter (ratio for sv_ratio, fraction for sv_fro/sv_cumulative)."),
                *output_inputs("resized"),
                *base_inputs(),
            ],
            outputs=[*outputs(), io.Image.Output(display_name="ranks_per_block",
                                                 tooltip="Mean rank each block's modules kept, as a bar chart.")],
        )

    @classmethod
    def execute(cls, lora_name, new_rank, new_conv_rank, dynamic_method, dynamic_param, output_name, if_exists,
                save_precision, model=None, clip=None) -> io.NodeOutput:
        path = output_path(output_name, if_exists)
        source = folder_paths.get_full_path_or_raise("loras", lora_name)
        dynamic = None if dynamic_method == NONE else dynamic_method
        resized, reports = resize.resize(load(lora_name, model, clip), new_rank, new_conv_rank or None, dynamic,
                                         dynamic_param if dynamic else None, name=Path(output_name).name)
        written = save(resized, path, save_precision)
        report = resize.report_text(reports, Path(source).stat().st_size, path.stat().st_size)
        chart = bar_chart(resize.rank_per_block(reports, resized.family), f"{written}: mean rank kept per block")
        return io.NodeOutput(written, report, chart, ui=ui.PreviewImage(chart, cls=cls))


def _text_encoders(clip, family: str) -> dict:
    model = clip.cond_stage_model
    return {"te1": model.clip_l, "te2": model.clip_g} if family == "sdxl" else {"te": model.clip_l}


def _weights(model, clip, family: str, conv: bool) -> dict[str, torch.Tensor]:
    """kohya module name -> weight of this MODEL (and CLIP), patches (e.g. LoRAs) applied."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model] + ([clip.patcher] if clip is not None else []), force_full_load=True)
    encoders = _text_encoders(clip, family) if clip is not None else None
    weights = extract.model_weights(model.model.diffusion_model, encoders, family,
                                    model.model.model_config.unet_config, conv)
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


# Inputs of loader nodes that name the file a MODEL comes from, and of nodes that patch it.
_FILE_INPUTS = ("ckpt_name", "unet_name", "model_name")
_PATCH_INPUTS = ("lora_name",)


def graph_source(prompt: dict | None, node_id: str | None, input_name: str, depth: int = 32) -> str:
    """What a MODEL input comes from, read from the queued graph (a MODEL carries no file name):
    the checkpoint file (or the loader's node type) and the LoRAs applied on the way, e.g.
    "base.safetensors + my_lora.safetensors"; "" when the graph does not tell."""
    names = []
    link = ((prompt or {}).get(str(node_id), {}).get("inputs", {})).get(input_name)
    while isinstance(link, list) and depth > 0:
        depth -= 1
        node = prompt.get(str(link[0]), {})
        inputs = node.get("inputs", {})
        names += [inputs[k] for k in _PATCH_INPUTS if isinstance(inputs.get(k), str)]
        found = next((inputs[k] for k in _FILE_INPUTS if isinstance(inputs.get(k), str)), None)
        link = inputs.get("model")
        if found is not None or not isinstance(link, list):  # a loader: its file, else its node type
            names.append(found or node.get("class_type", "?"))
            break
    return " + ".join(reversed(names))


class ExtractLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_ExtractLoRA",
            display_name="Extract LoRA from two models (LLLite Kit)",
            category=CATEGORY,
            description="A LoRA that turns model_base into model_tuned (sd-scripts extract_lora_from_models.py), "
            "SD1.5 or SDXL; the text encoders are included when the CLIPs are given and differ.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model_base", tooltip="The original model (e.g. the base checkpoint)."),
                io.Model.Input("model_tuned", tooltip="The fine-tuned model of the same family."),
                io.Int.Input("dim", default=4, min=1, max=1024, tooltip="Rank of the extracted LoRA."),
                io.Int.Input("conv_dim", default=0, min=0, max=1024, tooltip="Rank for 3x3 convs; 0: no conv modules."),
                io.Float.Input("clamp_quantile", default=0.99, min=0.0, max=1.0, step=0.001,
                               tooltip="Clamp the factors at this quantile of their values (sd-scripts); 1: no clamping."),
                io.Float.Input("min_diff", default=0.01, min=0.0, max=10.0, step=0.001,
                               tooltip="Text encoders are kept only if some weight differs by more than this."),
                method_input("lowrank"),
                *output_inputs("extracted"),
                io.Clip.Input("clip_base", optional=True, tooltip="The original text encoders (to extract them too)."),
                io.Clip.Input("clip_tuned", optional=True, tooltip="The fine-tuned text encoders."),
            ],
            outputs=outputs(),
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model_base, model_tuned, dim, conv_dim, clamp_quantile, min_diff, svd_method, output_name,
                if_exists, save_precision, clip_base=None, clip_tuned=None) -> io.NodeOutput:
        path = output_path(output_name, if_exists)
        family = unet_family(model_base)
        if unet_family(model_tuned) != family:
            raise ValueError("model_base and model_tuned are of different families.")
        with_te = clip_base is not None and clip_tuned is not None
        conv = conv_dim > 0
        base = _weights(model_base, clip_base if with_te else None, family, conv)
        tuned = _weights(model_tuned, clip_tuned if with_te else None, family, conv)
        sources = tuple(graph_source(cls.hidden.prompt, cls.hidden.unique_id, i) for i in ("model_base", "model_tuned"))
        lora, errors = extract.extract(base, tuned, dim, conv_dim or None, clamp_quantile if clamp_quantile < 1 else None,
                                       min_diff, svd_method, family, name=Path(output_name).name, sources=sources)
        written = save(lora, path, save_precision)
        worst = max(errors.items(), key=lambda kv: kv[1], default=("-", 0.0))
        report = (f"{written}: {len(lora.modules)} modules, rank {dim}; relative error mean "
                  f"{sum(errors.values()) / max(len(errors), 1):.4g}, worst {worst[1]:.4g} ({worst[0]})")
        return io.NodeOutput(written, report, ui=ui.PreviewText(report))


class CutDyLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_CutDyLoRA",
            display_name="Cut DyLoRA to a rank (LLLite Kit)",
            category=CATEGORY,
            description="Keeps the first `rank` ranks of a trained DyLoRA (sd-scripts extract_lora_from_dylora.py); "
            "rank must be a multiple of the DyLoRA's unit.",
            is_output_node=True,
            inputs=[
                lora_input("lora_name", "The DyLoRA file"),
                io.Int.Input("rank", default=4, min=1, max=1024, tooltip="Rank to keep: a multiple of the training unit."),
                *output_inputs("dylora_cut"),
            ],
            outputs=outputs(),
        )

    @classmethod
    def execute(cls, lora_name, rank, output_name, if_exists, save_precision) -> io.NodeOutput:
        path = output_path(output_name, if_exists)
        cut = dylora.cut(load(lora_name), rank, name=Path(output_name).name)
        written = save(cut, path, save_precision)
        report = f"{written}: {lora_name} cut to rank {rank}"
        return io.NodeOutput(written, report, ui=ui.PreviewText(report))


NODES = [LoraLoaderBlockWeight, InspectLoRA, MergeLoRAs, ResizeLoRA, ExtractLoRA, CutDyLoRA]
