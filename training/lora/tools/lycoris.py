"""LyCORIS LoHa / LoKr modules and DoRA modules read as their full weight difference, and that
difference as exact kohya factors, so every LoRA tool takes such files.

The difference is what core ComfyUI's weight adapters add to a layer at strength 1
(comfy/weight_adapter/loha.py, lokr.py, lora.py and base.weight_decompose), term for term:
  LoRA  up @ down * alpha / rank
  LoHa  (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank(w1_b)       (Tucker: t1/t2 einsums)
  LoKr  kron(w1, w2) * alpha / dim, w1 = w1_a @ w1_b or lokr_w1, w2 likewise (or t2 einsum);
        dim = rank of the last low-rank factor, no scale when both are full
  DoRA  any of these plus dora_scale: core's weight_decompose, so the difference depends on the
        base layer's weight (which must be given). Note core normalizes by the *original*
        weight's row norms when dora_scale is per output channel, by the patched weight's column
        norms otherwise; this follows core, not LyCORIS.
A missing alpha means no scale (as core reads it).

As kohya factors (up @ down = the difference, alpha = rank): LoHa without Tucker through the
face-splitting product (rank r1 * r2), LoKr through the Kronecker product of its factors' SVDs,
everything else (Tucker, DoRA) by an SVD of the difference in float64; then every module is
compacted to its numerical rank (singular values above RANK_RTOL of the largest).
"""
import re

import torch

_LORA = ("lora_up.weight", "lora_down.weight")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
PARTS = frozenset((*_LORA, *_LOHA, *_LOKR, "alpha", "dora_scale"))
RANK_RTOL = 1e-6

# kohya names of 3x3 and 1x1 convs in SD1.x/SD2.x (diffusers names) and SDXL (ldm names): the
# layer shape of a 2-D LoHa/LoKr factor, whose columns are in_channels * kernel area.
_CONV3 = re.compile(r"(_resnets_\d+_conv[12]|_(down|up)samplers_0_conv|_in_layers_2|_out_layers_3|_op"
                    r"|^lora_unet_conv_(in|out)|^lora_unet_input_blocks_0_0|^lora_unet_out_2"
                    r"|^lora_unet_output_blocks_\d+_\d+_conv)$")
_CONV1 = re.compile(r"(_conv_shortcut|_skip_connection)$|^lora_unet_(down_blocks|up_blocks|mid_block).*_proj_(in|out)$")


def group(tensors: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {part: tensor}, part e.g. "lora_up.weight", "hada_w1_a", "alpha"."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, value in tensors.items():
        name, _, part = key.partition(".")
        if not name.startswith("lora_") or part not in PARTS:
            foreign.append(key)
            continue
        modules.setdefault(name, {})[part] = value
    if foreign:
        raise ValueError(f"{source}: keys that are not kohya LoRA, LyCORIS LoHa/LoKr or DoRA: {foreign[:5]}")
    if not modules:
        raise ValueError(f"{source}: holds no LoRA weights")
    for name, parts in modules.items():
        kind(parts, f"{source}: {name}")
    return modules


def kind(parts: dict[str, torch.Tensor], where: str = "") -> str:
    """"lora", "loha" or "lokr" (DoRA is any of them with dora_scale); incomplete modules refused."""
    if any(p in parts for p in _LOKR):
        ok = ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= set(parts)) and (
            "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= set(parts))
        found = "lokr"
    elif any(p in parts for p in _LOHA):
        ok = set(_LOHA[:4]) <= set(parts) and (("hada_t1" in parts) == ("hada_t2" in parts))
        found = "loha"
    else:
        ok = set(_LORA) <= set(parts)
        found = "lora"
    if not ok:
        raise ValueError(f"{where}: incomplete {found} module (parts {sorted(parts)})")
    return found


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.float()  # core's intermediate dtype


def _alpha(parts, rank) -> float:
    return float(parts["alpha"]) / rank if "alpha" in parts and rank else 1.0


def _tucker(t, b, a) -> torch.Tensor:
    return torch.einsum("i j k l, j r, i p -> p r k l", _f(t), _f(b), _f(a))


def _lokr_factors(parts) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(w1, w2 as core builds them, scale)."""
    dim = None
    if "lokr_w1" in parts:
        w1 = _f(parts["lokr_w1"])
    else:
        dim = parts["lokr_w1_b"].shape[0]
        w1 = _f(parts["lokr_w1_a"]) @ _f(parts["lokr_w1_b"])
    if "lokr_w2" in parts:
        w2 = _f(parts["lokr_w2"])
    else:
        dim = parts["lokr_w2_b"].shape[0]
        w2 = (_tucker(parts["lokr_t2"], parts["lokr_w2_b"], parts["lokr_w2_a"]) if "lokr_t2" in parts
              else _f(parts["lokr_w2_a"]) @ _f(parts["lokr_w2_b"]))
    return w1, w2, (float(parts["alpha"]) / dim if "alpha" in parts and dim is not None else 1.0)


def _raw(parts) -> torch.Tensor:
    """The scaled difference before DoRA, in whatever shape core forms it before its reshape."""
    k = kind(parts)
    if k == "lora":
        up, down = _f(parts["lora_up.weight"]), _f(parts["lora_down.weight"])
        return (up.flatten(1) @ down.flatten(1)) * _alpha(parts, down.shape[0])
    if k == "loha":
        if "hada_t1" in parts:
            m1 = _tucker(parts["hada_t1"], parts["hada_w1_b"], parts["hada_w1_a"])
            m2 = _tucker(parts["hada_t2"], parts["hada_w2_b"], parts["hada_w2_a"])
        else:
            m1 = _f(parts["hada_w1_a"]) @ _f(parts["hada_w1_b"])
            m2 = _f(parts["hada_w2_a"]) @ _f(parts["hada_w2_b"])
        return m1 * m2 * _alpha(parts, parts["hada_w1_b"].shape[0])
    w1, w2, s = _lokr_factors(parts)
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    # contiguous: kron views its inputs (core's own kron of a Tucker w2 fails on that, see test_lycoris)
    return torch.kron(w1.contiguous(), w2.contiguous()) * s


def _weight_decompose(dora_scale, weight, lora_diff) -> torch.Tensor:
    """core's base.weight_decompose at strength 1: the new weight."""
    weight = _f(weight)
    calc = weight + lora_diff
    if dora_scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1))
    return calc * (_f(dora_scale) / (norm + torch.finfo(weight.dtype).eps))


def difference(parts: dict[str, torch.Tensor], shape, base: torch.Tensor | None = None,
               where: str = "") -> torch.Tensor:
    """The change core's loader makes to a layer of `shape` at strength 1 (float32). DoRA
    modules need the layer's weight `base`."""
    diff = _raw(parts).reshape(shape)
    if "dora_scale" not in parts:
        return diff
    if base is None:
        raise ValueError(f"{where}: a DoRA module's difference depends on the base model's weight; give the base model")
    return _weight_decompose(parts["dora_scale"], base, diff) - _f(base)


def layer_shape(name: str, parts: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The layer's weight shape as far as the file tells it: 4-D factors (or Tucker cores)
    carry the kernel; 2-D ones of known conv layers (by kohya name) are split into
    in_channels x kernel."""
    k = kind(parts)
    raw_shape = None
    if k == "lora" and parts["lora_down.weight"].dim() == 4:
        d = parts["lora_down.weight"]
        return (parts["lora_up.weight"].shape[0], *d.shape[1:])
    if k == "loha" and "hada_t1" in parts:
        t = parts["hada_t1"]
        return (parts["hada_w1_a"].shape[1], parts["hada_w1_b"].shape[1], *t.shape[2:])
    if k == "lokr":
        w1, w2, _ = _lokr_factors(parts)
        if w2.dim() == 4:
            return (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:])
        raw_shape = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1])
    elif k == "loha":
        raw_shape = (parts["hada_w1_a"].shape[0], parts["hada_w1_b"].shape[1])
    else:
        raw_shape = (parts["lora_up.weight"].shape[0], parts["lora_down.weight"].shape[1])
    out, cols = raw_shape
    if _CONV3.search(name) and cols % 9 == 0:
        return (out, cols // 9, 3, 3)
    if _CONV1.search(name):
        return (out, cols, 1, 1)
    return (out, cols)


def _svd_truncated(mat: torch.Tensor):
    U, S, Vh = torch.linalg.svd(mat.double(), full_matrices=False)
    k = _numerical_rank(S)
    return (U[:, :k] * S[:k]).contiguous(), Vh[:k].contiguous()


def _numerical_rank(S: torch.Tensor) -> int:
    return max(1, int((S > S[0] * RANK_RTOL).sum())) if S.numel() and S[0] > 0 else 1


def _factors(parts, shape, base, where) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) as 2-D float64 matrices with up @ down = the difference (flattened)."""
    k = kind(parts)
    if "dora_scale" in parts or (k == "loha" and "hada_t1" in parts):
        return _svd_truncated(difference(parts, shape, base, where).reshape(shape[0], -1))
    if k == "loha":
        a1, b1, a2, b2 = (parts[p].double() for p in _LOHA[:4])
        s = _alpha(parts, b1.shape[0])
        up = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1) * s
        return up, (b1[:, None, :] * b2[None, :, :]).reshape(-1, b1.shape[1])
    w1, w2, s = _lokr_factors(parts)
    u1, d1 = _svd_truncated(w1)
    u2, d2 = _svd_truncated(w2.reshape(w2.shape[0], -1))
    return _kron(u1, u2) * s, _kron(d1, d2)


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2-D Kronecker product; torch.kron fails to view an (n, 1) factor with stride (1, n)."""
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def to_kohya(name: str, parts: dict[str, torch.Tensor], base: torch.Tensor | None = None,
             where: str = "") -> dict[str, torch.Tensor]:
    """{"down", "up", "alpha"} (float32, alpha = rank) of a LoHa/LoKr/DoRA module with
    up @ down = its full difference, at the difference's numerical rank."""
    shape = tuple(base.shape) if base is not None else layer_shape(name, parts)
    up, down = _factors(parts, shape, base, where or name)
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.T)
    u, S, vh = torch.linalg.svd(ru @ rd.T)
    k = _numerical_rank(S)
    up, down = (qu @ u[:, :k]) * S[:k], vh[:k] @ qd.T
    if len(shape) == 4:
        up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
    return {"down": down.float().contiguous(), "up": up.float().contiguous(), "alpha": torch.tensor(float(k))}


def read_modules(tensors: dict[str, torch.Tensor], source: str, base=None) -> tuple[dict, str]:
    """(kohya module name -> {"down", "up", "alpha"?} in float32, the file's format: "lora",
    "loha", "lokr", "dora" or several joined by "+"). Plain kohya modules are kept as they are,
    the others turned into exact kohya factors. base: kohya name -> layer weight (a Mapping, e.g.
    base_weights.ModelWeights), needed for DoRA only."""
    modules, kinds = {}, set()
    for name, parts in group(tensors, source).items():
        k = kind(parts)
        kinds.add("dora" if "dora_scale" in parts else k)
        if k == "lora" and "dora_scale" not in parts:
            modules[name] = {"down": _f(parts["lora_down.weight"]), "up": _f(parts["lora_up.weight"]),
                             **({"alpha": _f(parts["alpha"])} if "alpha" in parts else {})}
            continue
        weight = None if base is None else base.get(name)
        if "dora_scale" in parts and weight is None:
            raise ValueError(f"{source}: {name} is a DoRA module: its difference depends on the base model's weights"
                             + ("; give the model it applies to (the node's model and clip inputs, --base on the "
                                "command line)" if base is None else ", and the base model given has no such layer"
                                + (" (text-encoder modules need its CLIP too)" if name.startswith("lora_te") else "")))
        modules[name] = to_kohya(name, parts, weight, f"{source}: {name}")
    return modules, "+".join(sorted(kinds))
