"""LoRA tools (issue 12): merge, resize, extract, DyLoRA cut, per-block weights, inspect.

Plain PyTorch on kohya LoRA tensors; files are read and written only through
training/lora/file.py (load_lora / save_lora). Every tool takes and returns `LoRA` objects
(in memory); `LoRA.load(path)` / `lora.save(path, dtype)` do the file I/O. Ratios and
weights are floats; ranks ints. Module names are kohya names (`lora_unet_...`, `lora_te1_...`).

API
---
common.LoRA(name: str, modules: dict[str, dict[str, Tensor]], metadata: dict[str, str], source_format="lora")
    modules: kohya module name -> {"down", "up", "alpha"} (alpha 0-d tensor).
    LoRA.load(path, base=None) -> LoRA           (name = file stem). LyCORIS LoHa/LoKr/DoRA modules
        are read as exact kohya factors of their full difference (lycoris.py); source_format says
        which ("loha", "lokr+dora" ...). base: kohya name -> layer weight, needed by DoRA only.
    lora.require_kohya(tool)                     ValueError for a LyCORIS file (weighted merge, DyLoRA cut)
    lora.save(path, dtype=torch.float32) -> dict  metadata written (ss_* + sshs hashes), atomic
    lora.delta(name) -> Tensor                   full weight difference up@down*alpha/rank
    lora.family -> "sdxl" | "sd15" | None        from ss_base_model_version or key names
base_weights.ModelWeights(model=None, clip=None)   Mapping kohya name -> layer weight of a ComfyUI MODEL/CLIP
    (core's key maps; patches on the model applied, read at the first lookup): the `base` DoRA needs.
common.SVD_METHODS = ("exact", "lowrank")

merge.merge_concat(loras: list[LoRA], ratios: list[float] | None = None,
                   block_ratios: list[list[float] | str | None] | None = None, name="merged") -> LoRA
    exact: rank = sum of ranks, delta = sum(ratio_i * block_w * delta_i).
merge.merge_weighted(loras, ratios=None, block_ratios=None, name="merged") -> LoRA
    sd-scripts merge_lora.py (non-concat): down/up summed with sqrt(alpha/base_alpha)*ratio;
    every LoRA must have the same rank per module (ValueError otherwise).
merge.merge_svd(loras, ratios=None, new_rank: int = 4, new_conv_rank: int | None = None,
                block_ratios=None, clamp_quantile: float | None = 0.99, method="exact",
                name="merged") -> LoRA
    sd-scripts svd_merge_lora.py: sum of deltas, truncated SVD to new_rank (3x3 convs to
    new_conv_rank, default new_rank), alpha = rank. clamp_quantile None: no clamping.
  block_ratios: per LoRA a block-weight vector / preset (see block_weights.parse) or None.

resize.resize(lora, new_rank: int, new_conv_rank: int | None = None,
              dynamic_method: str | None = None, dynamic_param: float | None = None,
              name: str | None = None) -> tuple[LoRA, list[ModuleReport]]
    dynamic_method: None | "sv_ratio" | "sv_fro" | "sv_cumulative" (new_rank is then the cap).
    A module never gets more than its old rank. new_alpha = old_alpha / old_rank * new_rank.
    ModuleReport(name, old_rank, new_rank, new_alpha, fro_retained, sum_retained, max_ratio)
resize.report_text(reports, old_bytes=None, new_bytes=None) -> str   sd-scripts' verbose lines

extract.model_weights(diffusion_model, text_encoders: dict | None, family, unet_config,
                      conv: bool) -> dict[str, Tensor]     kohya name -> layer weight (targets.py)
extract.extract(base: dict[str, Tensor], tuned: dict[str, Tensor], dim: int = 4,
                conv_dim: int | None = None, clamp_quantile: float | None = 0.99,
                min_diff: float = 0.01, method: str = "lowrank", family: str | None = None,
                name="extracted", sources=("", "")) -> tuple[LoRA, dict[str, float]]
    base/tuned: kohya module name -> weight (same keys). Text-encoder modules are kept only if
    some |diff| > min_diff (sd-scripts). 3x3 conv modules only when conv_dim is set.
    Returns (lora, per-module relative Frobenius error of the rank-k factorization).

lycoris.difference(parts, shape, base=None) -> Tensor    core's change at strength 1 of one module
    (parts: "hada_w1_a", "lokr_w1", "lora_up.weight", "alpha", "dora_scale" ...); lycoris.group(tensors, source),
    lycoris.layer_shape(name, parts), lycoris.to_kohya(name, parts, base=None), lycoris.read_modules(...).

dylora.unit_of(lora) -> int | None          from ss_network_args["unit"]
dylora.cut(lora, rank: int, unit: int | None = None, name=None) -> LoRA    first rank rows of down /
    columns of up, alpha kept (sd-scripts extract_lora_from_dylora.py).

block_weights.PRESETS: dict[int, dict[str, list[float]]]   vector length -> preset -> values
block_weights.parse(spec: str | list[float], family: str) -> list[float]
    "ALL", "INS", ..., or "1,0,0.5,..." (12/17/20/26 values; SD1.5 17/26/12, SDXL 12/20/26).
    parse(preset, family, length=None): a preset means 17 values on sd15, 12 on sdxl.
block_weights.PRESET_NAMES, block_weights.LAYOUTS (length -> block labels),
block_weights.block_label(module_name, family) -> "BASE" | "INnn" | "MID" | "OUTnn" | None
block_weights.module_multipliers(names, weights: list[float], family) -> dict[str, float]
block_weights.apply(lora, spec, family=None) -> LoRA    up scaled per module, 0 -> module dropped
block_weights.scale_state_dict(tensors: dict[str, Tensor], spec, family) -> dict[str, Tensor]
    the same on raw tensors (for a loader node feeding comfy.lora.load_lora): kohya, LoHa, LoKr; DoRA refused.

inspect.inspect(lora) -> dict with keys "family", "metadata" (ss_*/modelspec/sshs keys), "tags" ({tag: count}),
    "base_model_hash", "modules" (per module rank, alpha, norm), "blocks" (block label ->
    {"modules", "ranks", "alphas", "norm"}, in block order), norm = Frobenius norm of the weight
    difference (alpha/rank included). Modules carry "block", "rank", "alpha", "norm".
resize.ModuleReport is a frozen dataclass; report_text gives sd-scripts' --verbose lines.

Every tool's output has ss_lora_tool (tool name), ss_lora_tool_args (JSON: sources with
name and sshs_model_hash, ratios, ranks, ...) and ss_training_comment; network keys
ss_network_module/dim/alpha/args and the source's base-model keys (ss_base_model_version,
ss_v2, modelspec.*).
"""
