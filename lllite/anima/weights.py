"""The one reader and writer of Anima-LLLite v2 files (kohya's named-key layout, as core's
ModelPatchLoader reads them): metadata `lllite.version` "2", `lllite.aspp_dilations` and
`lllite.inpaint_masked_input` are what core reads besides the tensors."""
import os
from collections import defaultdict

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...files.atomic import write_atomic
from ..weights import modelspec
from .module import DEFAULT_ASPP, MODULE_RE, AnimaLLLiteNetwork

ARCHITECTURE = "anima-preview/control-net-lllite"  # sd-scripts sai_model_spec ARCH_ANIMA_PREVIEW
CONDITIONING = "lllite_conditioning1."


def is_anima_lllite(keys) -> bool:
    return any(k.startswith(CONDITIONING) for k in keys)


def network_from_state_dict(sd: dict, metadata: dict | None, label: str) -> AnimaLLLiteNetwork:
    """Build and load the network a v2 state dict describes; ValueError says what is wrong."""
    metadata = metadata or {}
    version = metadata.get("lllite.version", "2")
    if version != "2":
        raise ValueError(f"{label}: Anima LLLite version {version!r}; only the named-key v2 files are supported")
    try:
        in_channels = sd[CONDITIONING + "conv1.weight"].shape[1]
        cond_dim = sd[CONDITIONING + "conv3.weight"].shape[0]
        cond_emb_dim = sd[CONDITIONING + "proj.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"{label}: Anima LLLite conditioning is incomplete: missing {err.args[0]}") from None
    resblocks = len({k.split(".")[2] for k in sd if k.startswith(CONDITIONING + "resblocks.")})
    aspp = ()
    if any(k.startswith(CONDITIONING + "aspp.") for k in sd):
        text = metadata.get("lllite.aspp_dilations", ",".join(map(str, DEFAULT_ASPP)))
        aspp = tuple(int(v) for v in text.split(",") if v.strip())
    modules, mlp_dims, others = {}, defaultdict(list), []
    for key, tensor in sd.items():
        if key.startswith(CONDITIONING):
            continue
        name, _, param = key.partition(".")
        match = MODULE_RE.fullmatch(name)
        if match is None:
            others.append(key)
        elif param == "down.weight":
            modules[(int(match.group(1)), match.group(2))] = tensor.shape[1]
            mlp_dims[tensor.shape[0]].append(name)
    if others:
        raise ValueError(f"{label}: keys that are not Anima LLLite v2 parameters: {sorted(others)[:5]}")
    if not modules:
        raise ValueError(f"{label}: Anima LLLite file without lllite_dit_blocks_* modules")
    if len(mlp_dims) > 1:
        raise ValueError(f"{label}: modules of different network_dim {sorted(mlp_dims)} are not supported")
    with torch.device("meta"):
        net = AnimaLLLiteNetwork(in_channels, cond_dim, cond_emb_dim, resblocks, aspp, modules, next(iter(mlp_dims)),
                                 metadata.get("lllite.inpaint_masked_input", "false").lower() == "true", label)
    expected = net.state_dict()
    problems = [f"missing {k}" for k in expected if k not in sd]
    problems += [f"{k} is {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems += [f"unexpected {k}" for k in sd if k not in expected]
    if problems:
        raise ValueError(f"{label}: Anima LLLite file is incomplete or inconsistent: {'; '.join(problems[:5])}")
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


def read_anima_lllite(path: str, name: str | None = None) -> AnimaLLLiteNetwork:
    label = name or os.path.basename(path)
    with safe_open(path, framework="pt", device="cpu") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return network_from_state_dict(sd, metadata, label)


def file_metadata(network: AnimaLLLiteNetwork) -> dict[str, str]:
    """The keys core's loader reads, plus the dims for tools that list them."""
    return {
        "lllite.version": "2",
        "lllite.aspp_dilations": ",".join(map(str, network.aspp_dilations)),
        "lllite.inpaint_masked_input": str(network.inpaint_masked_input).lower(),
        "lllite.cond_in_channels": str(network.in_channels),
        "ss_network_dim": str(network.mlp_dim),
        "ss_cond_emb_dim": str(network.cond_emb_dim),
    }


def save_anima_lllite(path: str, network: AnimaLLLiteNetwork, dtype: torch.dtype | None = None,
                      metadata: dict | None = None) -> None:
    """Write `network` as a v2 named-key file, atomically; `metadata` (strings) over ours."""
    meta = {**modelspec(ARCHITECTURE, os.path.splitext(os.path.basename(path))[0]), "modelspec.resolution": "1024x1024",
            **file_metadata(network), **(metadata or {})}
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in network.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta), "Anima LLLite file")
