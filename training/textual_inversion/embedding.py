"""The trained vectors and their file, in the layout every loader reads:

- SD1.x: {"emb_params": [n, 768]} (sd-scripts' train_textual_inversion.py; A1111 reads a
  single-tensor safetensors file; ComfyUI's load_embed takes its only tensor);
- SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]} (sd-scripts' sdxl_train_textual_inversion.py;
  A1111 and ComfyUI pick the tensor by each encoder's key).

In memory the vectors are keyed by ComfyUI's embedding keys ("clip_l", "clip_g"), the keys
its tokenizers look up.
"""
import safetensors
import safetensors.torch
import torch

from ...files.atomic import write_atomic

SINGLE_KEY = "emb_params"  # the one tensor of an SD1.x / SD2.x embedding file


def initial_vectors(tables: dict[str, torch.Tensor], init_ids: dict[str, list[int]], num_vectors: int,
                    seed: int) -> dict[str, torch.Tensor]:
    """[num_vectors, width] per embedding key: vector i is the token embedding of the init
    word's token i mod (its token count), as sd-scripts fills the new tokens; without an init
    word, random with the table's own spread."""
    if num_vectors < 1:
        raise ValueError(f"num_vectors_per_token must be >= 1, got {num_vectors}")
    out = {}
    generator = torch.Generator().manual_seed(seed)
    for key, table in tables.items():
        table = table.detach().float().cpu()
        ids = init_ids.get(key) or []
        if ids:
            out[key] = torch.stack([table[ids[i % len(ids)]] for i in range(num_vectors)]).clone()
        else:
            out[key] = torch.randn(num_vectors, table.shape[1], generator=generator) * table.std()
    return out


def file_tensors(vectors: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """In-memory vectors -> the file's tensors."""
    if family == "sdxl":
        return {"clip_l": vectors["clip_l"], "clip_g": vectors["clip_g"]}
    (only,) = vectors.values()
    return {SINGLE_KEY: only}


def memory_vectors(tensors: dict[str, torch.Tensor], keys: list[str], source: str) -> dict[str, torch.Tensor]:
    """A file's tensors -> vectors by embedding key (`keys`: the model's, e.g. ["clip_l"])."""
    if set(keys) <= set(tensors):
        return {k: tensors[k] for k in keys}
    if len(keys) == 1 and len(tensors) == 1:
        return {keys[0]: next(iter(tensors.values()))}
    raise ValueError(f"{source}: an embedding for this model needs the tensors {', '.join(keys)}; it has {', '.join(sorted(tensors))}")


def save_embedding(path: str, vectors: dict[str, torch.Tensor], family: str, dtype: torch.dtype,
                   metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in file_tensors(vectors, family).items()}
    write_atomic(path, safetensors.torch.save(tensors, metadata), "embedding file")


def load_embedding(path: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path)
    except Exception as e:
        raise ValueError(f"{path} is not a readable .safetensors embedding: {e}") from e
