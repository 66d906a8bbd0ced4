"""The LoRA tools nodes in real graphs (ComfyUI's validation and executor): the block-weight
loader patches exactly what core's LoraLoader does, block by block; inspect, merge, resize,
extract and DyLoRA cut write loadable kohya files into the loras folder without overwriting."""
import logging

import pytest
import safetensors
import torch

import comfy.model_management
from graph_runner import GraphError
from lora_helpers import attached, randomize


def _write_lora(tiny, path, family: str, seed: int, **options):
    model, clip, adapter = attached(tiny, family, seed=0, **options)
    try:
        randomize(adapter, seed=seed)
        adapter.save(str(path), torch.float32, {})
    finally:
        adapter.detach()
        comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def loras(tiny, comfy_dirs):
    """Files in the loras folder: SD1.5 C3Lier (conv too, so every block has modules), a second
    SD1.5 LierLa of another rank, an SDXL LierLa, an SD1.5 DyLoRA."""
    folder = comfy_dirs / "models" / "loras"
    _write_lora(tiny, folder / "tools_sd15_a.safetensors", "sd15", 1, dim=4, conv_dim=2, conv_alpha=1.0)
    _write_lora(tiny, folder / "tools_sd15_b.safetensors", "sd15", 2, dim=2, alpha=1.0)
    _write_lora(tiny, folder / "tools_sdxl.safetensors", "sdxl", 3, dim=2, alpha=2.0)
    _write_lora(tiny, folder / "tools_dylora.safetensors", "sd15", 4, dim=4, unit=2)
    return folder


def _checkpoint(family: str) -> dict:
    return {"1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": family, "seed": 0}}}


def _loaders(family: str, lora: str, preset: str, vector: str = "", strength_clip: float = 1.0) -> dict:
    """Core's LoraLoader (node 2) and ours (node 3) on the same model."""
    return {
        **_checkpoint(family),
        "2": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 0.8, "strength_clip": strength_clip}},
        "3": {"class_type": "LLLiteKit_LoraLoaderBlockWeight", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 0.8, "strength_clip": strength_clip,
            "preset": preset, "block_vector": vector}},
        # the executor runs only what reaches an output node
        **{str(10 + i): {"class_type": "PreviewAny", "inputs": {"source": [n, k]}}
           for i, (n, k) in enumerate([("2", 0), ("2", 1), ("3", 0), ("3", 1)])},
    }


def _run_loaders(graph, prompt):
    graph.run(prompt)
    (core_model, core_clip), (ours_model, ours_clip) = graph.node_outputs("2"), graph.node_outputs("3")
    return (core_model[0].patches, core_clip[0].patcher.patches), (ours_model[0].patches, ours_clip[0].patcher.patches)


def _weights(patch_list):
    """The (strength, LoRA tensors) of each patch on a key."""
    return [(p[0], [w for w in p[1].weights if isinstance(w, torch.Tensor)]) for p in patch_list]


def _assert_same(core: dict, ours: dict, scale: float = 1.0):
    assert set(core) == set(ours)
    for key in core:
        (cs, ct), = _weights(core[key])
        (os_, ot), = _weights(ours[key])
        assert cs == os_
        up_core, up_ours = ct[0], ot[0]  # kohya: weights = (up, down, alpha, ...)
        assert torch.equal(up_ours, up_core * scale) if scale != 1 else torch.equal(up_ours, up_core)
        assert all(torch.equal(a, b) for a, b in zip(ct[1:], ot[1:]))


def test_block_weight_loader_all_ones_equals_core_loader(graph, loras):
    (core_unet, core_te), (ours_unet, ours_te) = _run_loaders(graph, _loaders("sd15", "tools_sd15_a.safetensors", "ALL"))
    assert len(core_unet) > 20 and len(core_te) > 5
    _assert_same(core_unet, ours_unet)
    _assert_same(core_te, ours_te)


def test_block_weight_loader_zero_block_removes_exactly_that_block(graph, loras):
    # 26 values: BASE IN00-IN11 MID OUT00-OUT11; IN04 -> 0, OUT05 -> 0.5 (C3Lier: every block has modules)
    vector = ["1"] * 26
    vector[1 + 4], vector[14 + 5] = "0", "0.5"
    (core_unet, core_te), (ours_unet, ours_te) = _run_loaders(
        graph, _loaders("sd15", "tools_sd15_a.safetensors", "custom", ",".join(vector)))
    in04 = {k for k in core_unet if k.startswith("diffusion_model.input_blocks.4.")}
    out05 = {k for k in core_unet if k.startswith("diffusion_model.output_blocks.5.")}
    assert in04 and out05
    assert set(ours_unet) == set(core_unet) - in04
    _assert_same({k: core_unet[k] for k in out05}, {k: ours_unet[k] for k in out05}, scale=0.5)
    rest = set(ours_unet) - out05
    _assert_same({k: core_unet[k] for k in rest}, {k: ours_unet[k] for k in rest})
    _assert_same(core_te, ours_te)


def test_block_weight_loader_sdxl_20_values_base_zero(graph, loras):
    # 20 values: BASE IN00-IN08 MID OUT00-OUT08; BASE 0 leaves the text encoders alone
    vector = ["1"] * 20
    vector[0], vector[11 + 2] = "0", "0"
    (core_unet, core_te), (ours_unet, ours_te) = _run_loaders(
        graph, _loaders("sdxl", "tools_sdxl.safetensors", "custom", ",".join(vector)))
    out02 = {k for k in core_unet if k.startswith("diffusion_model.output_blocks.2.")}
    assert out02 and core_te and ours_te == {}
    assert set(ours_unet) == set(core_unet) - out02


def test_block_weight_loader_bad_vector_names_the_counts(graph, loras):
    with pytest.raises(GraphError, match="17, 26, 12 values, got 5"):
        _run_loaders(graph, _loaders("sd15", "tools_sd15_a.safetensors", "custom", "1,1,1,1,1"))
