"""LoRA Block Weight: one multiplier per U-Net block (and BASE = the text encoders), as the
A1111 extension (hako-mikan/sd-webui-lora-block-weight), the ComfyUI Inspire pack and
sd-scripts' merge_lora.py --lbws number them.

Blocks are named BASE, IN00-IN11, MID, OUT00-OUT11 (SD1.x numbering; SDXL input_blocks_N /
output_blocks_N are INnn / OUTnn). A vector names a subset of them by its length:
  12 (SDXL LoRA): BASE IN04 IN05 IN07 IN08 MID OUT00-OUT05
  17 (SD1.5 LoRA): BASE IN01 IN02 IN04 IN05 IN07 IN08 MID OUT03-OUT11
  20 (SDXL LyCORIS/C3Lier): BASE IN00-IN08 MID OUT00-OUT08
  26 (all): BASE IN00-IN11 MID OUT00-OUT11
Modules in no listed block keep weight 1 (sd-scripts does the same).

Presets pick blocks by depth. For 17 values they are exactly the extension's and Inspire's
(NONE ALL INS IND INALL MIDD OUTD OUTS OUTALL); for 12 values ALL, NONE, INALL and OUTALL
are Inspire's SDXL presets, and INS/IND/MIDD/OUTD/OUTS use the same split: shallow input
blocks IN04-05, deep IN07-08, deep output OUT00-02, shallow OUT03-05 (for 20 values: shallow
IN00-06 and OUT03-08; for 26: IN00-04 / IN05-11, OUT00-06 deep / OUT07-11 shallow).
"""
import re

import torch

_ALL26 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)]
LAYOUTS = {
    12: ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(6)],
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(3, 12)],
    20: ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["MID"] + [f"OUT{i:02d}" for i in range(9)],
    26: _ALL26,
}
LENGTHS = {"sd15": (17, 26, 12), "sdxl": (12, 20, 26)}  # first: the length a preset name means


def _r(prefix: str, a: int, b: int) -> set[str]:
    return {f"{prefix}{i:02d}" for i in range(a, b + 1)}


# length -> (shallow in, deep in, deep out, shallow out)
_DEPTH = {
    17: ({"IN01", "IN02", "IN04"}, {"IN05", "IN07", "IN08"}, _r("OUT", 3, 6), _r("OUT", 7, 11)),
    12: ({"IN04", "IN05"}, {"IN07", "IN08"}, _r("OUT", 0, 2), _r("OUT", 3, 5)),
    20: (_r("IN", 0, 6), {"IN07", "IN08"}, _r("OUT", 0, 2), _r("OUT", 3, 8)),
    26: (_r("IN", 0, 4), _r("IN", 5, 11), _r("OUT", 0, 6), _r("OUT", 7, 11)),
}
PRESET_NAMES = ("NONE", "ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS", "OUTALL")


def _preset_blocks(name: str, length: int) -> set[str]:
    ins, ind, outd, outs = _DEPTH[length]
    return {
        "NONE": set(), "ALL": set(LAYOUTS[length]),
        "INS": {"BASE"} | ins, "IND": {"BASE"} | ind, "INALL": {"BASE"} | ins | ind,
        "MIDD": {"BASE"} | ind | {"MID"} | outd, "OUTD": {"BASE"} | outd, "OUTS": {"BASE"} | outs,
        "OUTALL": {"BASE"} | outd | outs,
    }[name]


PRESETS = {n: {p: [1.0 if b in _preset_blocks(p, n) else 0.0 for b in LAYOUTS[n]] for p in PRESET_NAMES} for n in LAYOUTS}

_SD15 = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_label(name: str, family: str) -> str | None:
    """BASE / INnn / MID / OUTnn of a kohya module name; None for U-Net layers in no block
    (time/label embedding, out)."""
    if name.startswith("lora_te"):
        return "BASE"
    if family == "sd15":
        m = _SD15.search(name)
        if m:
            updown, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            if updown == "down":
                return f"IN{3 * (i + 1) if kind == 'downsamplers' else 3 * i + j + 1:02d}"
            return f"OUT{3 * i + 2 if kind == 'upsamplers' else 3 * i + j:02d}"
        if "mid_block_" in name:
            return "MID"
        return None
    unet = name.removeprefix("lora_unet_")
    for prefix, label in (("input_blocks_", "IN"), ("output_blocks_", "OUT")):
        if unet.startswith(prefix):
            return f"{label}{int(unet.split('_')[2]):02d}"
    return "MID" if unet.startswith("middle_block_") else None


def block_order(label: str) -> int:
    """Sort key of block labels: BASE, IN00..IN11, MID, OUT00..OUT11, OTHER (layers in no block)."""
    fixed = {"BASE": -1, "MID": 100, "OTHER": 1000}
    if label in fixed:
        return fixed[label]
    return int(label[2:]) if label.startswith("IN") else 200 + int(label[3:])


def parse(spec, family: str, length: int | None = None) -> list[float]:
    """Block weights from a preset name (its family's default length unless `length` is given)
    or comma-separated numbers / a list of numbers (12, 17, 20 or 26 of them)."""
    if family not in LENGTHS:
        raise ValueError(f"block weights: family must be 'sd15' or 'sdxl', got {family!r}")
    if isinstance(spec, str) and spec.strip().upper() in PRESET_NAMES:
        n = length or LENGTHS[family][0]
        if n not in LENGTHS[family]:
            raise ValueError(f"block weights: {family} takes {LENGTHS[family]} values, not {n}")
        return list(PRESETS[n][spec.strip().upper()])
    if isinstance(spec, str):
        try:
            values = [float(v) for v in spec.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise ValueError(f"block weights: expected a preset ({', '.join(PRESET_NAMES)}) or comma-separated numbers, got {spec!r}") from None
    else:
        values = [float(v) for v in spec]
    if len(values) not in LENGTHS[family]:
        raise ValueError(f"block weights: {family} takes {', '.join(map(str, LENGTHS[family]))} values, got {len(values)}")
    return values


def module_multipliers(names, weights: list[float], family: str) -> dict[str, float]:
    """kohya module name -> multiplier for a parsed weight vector."""
    layout = LAYOUTS.get(len(weights))
    if layout is None:
        raise ValueError(f"block weights: {len(weights)} values; expected one of {sorted(LAYOUTS)}")
    by_label = dict(zip(layout, weights))
    return {n: by_label.get(block_label(n, family), 1.0) for n in names}


def apply(lora, spec, family: str | None = None):
    """A new LoRA whose every module's difference is scaled by its block's weight; modules of
    weight 0 are left out."""
    from .common import LoRA, tool_metadata
    family = family or lora.family
    if family is None:
        raise ValueError(f"{lora.name}: cannot tell SD1.5 from SDXL; give the family")
    weights = parse(spec, family)
    mult = module_multipliers(lora.modules, weights, family)
    modules = {n: {**p, "up": p["up"] * mult[n]} for n, p in lora.modules.items() if mult[n] != 0}
    meta = dict(lora.metadata)
    meta.update(tool_metadata("block_weights", f"block weights {','.join(f'{w:g}' for w in weights)} applied to {lora.name}",
                              source=lora.name, weights=weights))
    return LoRA(f"{lora.name}_lbw", modules, meta)


# Per module the one tensor its difference is linear in: kohya's lora_up, LoHa's w1_a, LoKr's w1.
_LINEAR_PART = (".lora_up.weight", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a")


def split_dora(tensors: dict[str, torch.Tensor], spec, family: str) -> tuple[dict, list[tuple[float, dict]]]:
    """(the non-DoRA tensors, scaled by scale_state_dict; [(block weight, the tensors of the DoRA
    modules of that weight)] without weight 0). A DoRA module's change is linear in no one
    tensor, but core applies a LoRA's strength to its whole change, so a loader loads each group
    at strength x its block weight."""
    from .lycoris import group

    weights = parse(spec, family)
    modules = group(tensors, "block weights")
    mult = module_multipliers(modules, weights, family)
    dora = {n for n, parts in modules.items() if "dora_scale" in parts}
    by_weight: dict[float, dict] = {}
    for key, value in tensors.items():
        name = key.split(".", 1)[0]
        if name in dora and mult[name] != 0:
            by_weight.setdefault(mult[name], {})[key] = value
    rest = {k: v for k, v in tensors.items() if k.split(".", 1)[0] not in dora}
    return (scale_state_dict(rest, weights, family) if rest else {}), sorted(by_weight.items())


def scale_state_dict(tensors: dict[str, torch.Tensor], spec, family: str) -> dict[str, torch.Tensor]:
    """The same on a raw state dict (e.g. for comfy.lora.load_lora) of kohya LoRA or LyCORIS
    LoHa/LoKr modules: the tensor each difference is linear in is scaled, modules of weight 0
    dropped. DoRA (not linear in any one tensor) and other formats are refused."""
    from .lycoris import group

    weights = parse(spec, family)
    modules = group(tensors, "block weights")
    dora = [n for n, parts in modules.items() if "dora_scale" in parts]
    if dora:
        raise ValueError(f"block weights cannot scale DoRA modules (dora_scale is not linear in the difference; "
                         f"split_dora loads them at a strength per block): {dora[:3]}")
    mult = module_multipliers(modules, weights, family)
    out = {}
    for key, value in tensors.items():
        m = mult[key.split(".", 1)[0]]
        if m == 0:
            continue
        out[key] = value * m if key.endswith(_LINEAR_PART) else value
    return out
