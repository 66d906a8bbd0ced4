"""The LoRA tools nodes in real graphs (ComfyUI's validation and executor): the block-weight
loader patches exactly what core's LoraLoader does, block by block; inspect, merge, resize,
extract and DyLoRA cut write loadable kohya files into the loras folder without overwriting."""
import json
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


def _tool(graph, class_type: str, **inputs):
    """Runs one tools node (an output node) and returns its Python outputs."""
    graph.run({"1": {"class_type": class_type, "inputs": inputs}})
    return graph.node_outputs("1")


def _load(path):
    from lllite_kit.training.lora.tools.common import LoRA

    return LoRA.load(str(path))


def _loads_in_core(tiny, name, family, caplog):
    import nodes

    model, clip = tiny.build_model(family), tiny.build_clip(family)
    caplog.set_level(logging.WARNING)
    caplog.clear()
    model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()] == []
    return len(model_lora.patches) + len(clip_lora.patcher.patches)


def test_inspect_node_shows_blocks_metadata_and_a_chart(graph, loras):
    (text,), (chart,) = _tool(graph, "LLLiteKit_InspectLoRA", lora_name="tools_sd15_a.safetensors")
    a = _load(loras / "tools_sd15_a.safetensors")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:3] in ("BAS", "IN0", "IN1", "MID", "OUT")}
    assert {"BASE", "IN01", "IN04", "MID", "OUT05", "OUT11"} <= set(rows)
    assert sum(int(r[1]) for r in rows.values()) == len(a.modules)
    assert rows["IN01"][2] == "2,4"  # C3Lier: conv modules rank 2, linear rank 4
    in04 = [n for n in a.modules if "down_blocks_1_attentions_0_" in n or "down_blocks_1_resnets_0_" in n]
    expected = sum(float(a.delta(n).norm()) ** 2 for n in in04) ** 0.5
    assert float(rows["IN04"][4]) == pytest.approx(expected, rel=1e-3)
    assert "ss_network_dim: 4" in text
    assert chart.shape == (1, 320, 640, 3) and (chart < 0.5).any()


def test_merge_node_concat_sums_the_differences_and_never_overwrites(graph, loras, tiny, caplog):
    inputs = dict(lora_1="tools_sd15_a.safetensors", ratio_1=1.0, block_ratios_1="",
                  lora_2="tools_sd15_b.safetensors", ratio_2=-0.5, block_ratios_2="", lora_3="none", ratio_3=1.0,
                  block_ratios_3="", mode="concat", new_rank=4, new_conv_rank=0, clamp_quantile=0.99, svd_method="exact",
                  output_name="tools/merged", if_exists="new name", save_precision="float")
    (name,), (report,) = _tool(graph, "LLLiteKit_MergeLoRAs", **inputs)
    assert name == "tools/merged.safetensors" and "tools_sd15_b.safetensors x -0.5" in report
    merged, a, b = _load(loras / name), _load(loras / "tools_sd15_a.safetensors"), _load(loras / "tools_sd15_b.safetensors")
    for n in list(b.modules)[:5]:
        torch.testing.assert_close(merged.delta(n), a.delta(n) - 0.5 * b.delta(n), rtol=1e-5, atol=1e-6)
    assert merged.metadata["ss_lora_tool"] == "merge_concat"
    assert _loads_in_core(tiny, name, "sd15", caplog) > 0

    before = (loras / name).read_bytes()
    (second,), _ = _tool(graph, "LLLiteKit_MergeLoRAs", **dict(inputs, ratio_2=1.0))
    assert second == "tools/merged_2.safetensors" and (loras / name).read_bytes() == before
    (third,), _ = _tool(graph, "LLLiteKit_MergeLoRAs", **dict(inputs, ratio_2=1.0, if_exists="overwrite"))
    assert third == name and (loras / name).read_bytes() != before


def test_merge_node_refuses_a_name_outside_the_folder(graph, loras):
    with pytest.raises(GraphError, match="not allowed"):
        _tool(graph, "LLLiteKit_MergeLoRAs", lora_1="tools_sd15_a.safetensors", ratio_1=1.0, block_ratios_1="",
              lora_2="tools_sd15_b.safetensors", ratio_2=1.0, block_ratios_2="", lora_3="none", ratio_3=1.0,
              block_ratios_3="", mode="svd", new_rank=2, new_conv_rank=0, clamp_quantile=0.99, svd_method="exact",
              output_name="../escape", if_exists="new name", save_precision="fp16")
    assert not (loras.parent / "escape.safetensors").exists()


def test_resize_and_dylora_cut_nodes_write_the_asked_ranks(graph, loras, tiny, caplog):
    (name,), (report,), (chart,) = _tool(graph, "LLLiteKit_ResizeLoRA", lora_name="tools_sd15_a.safetensors", new_rank=2,
                                         new_conv_rank=1, dynamic_method="none", dynamic_param=0.9,
                                         output_name="tools_resized", if_exists="new name", save_precision="fp16")
    resized = _load(loras / name)
    assert {p["down"].shape[0] for n, p in resized.modules.items() if p["down"].dim() == 2} == {2}
    assert chart.shape == (1, 320, 640, 3) and float(chart.min()) < 0.5  # bars drawn
    assert "->" in report or "size" in report.lower()
    assert _loads_in_core(tiny, name, "sd15", caplog) > 0

    (cut_name,), _ = _tool(graph, "LLLiteKit_CutDyLoRA", lora_name="tools_dylora.safetensors", rank=2,
                           output_name="tools_cut", if_exists="new name", save_precision="float")
    cut, full = _load(loras / cut_name), _load(loras / "tools_dylora.safetensors")
    n = next(iter(full.modules))
    assert cut.modules[n]["down"].shape[0] == 2
    torch.testing.assert_close(cut.modules[n]["down"], full.modules[n]["down"][:2])
    with pytest.raises(GraphError, match="unit|multiple"):
        _tool(graph, "LLLiteKit_CutDyLoRA", lora_name="tools_dylora.safetensors", rank=3,
              output_name="tools_cut", if_exists="new name", save_precision="float")


def test_extract_node_recovers_a_lora_applied_by_core(graph, loras, tiny, caplog):
    """model_tuned = base + LoRA b through core's LoraLoader: extracting at b's rank, without
    clamping, gives b's weight differences back to float precision, text encoders included."""
    prompt = {
        **_checkpoint("sd15"),
        "2": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": "tools_sd15_b.safetensors", "strength_model": 1.0,
            "strength_clip": 1.0}},
        "3": {"class_type": "LLLiteKit_ExtractLoRA", "inputs": {
            "model_base": ["1", 0], "model_tuned": ["2", 0], "clip_base": ["1", 1], "clip_tuned": ["2", 1], "dim": 2,
            "conv_dim": 0, "clamp_quantile": 1.0, "min_diff": 0.0, "svd_method": "exact",
            "output_name": "tools_extracted", "if_exists": "new name", "save_precision": "float"}},
    }
    graph.run(prompt)
    name, report = graph.node_outputs("3")
    extracted, b = _load(loras / name[0]), _load(loras / "tools_sd15_b.safetensors")
    assert any(n.startswith("lora_te_") for n in b.modules)
    for n in b.modules:
        torch.testing.assert_close(extracted.delta(n), b.delta(n), rtol=1e-3, atol=1e-5)
    assert "relative error" in report[0]
    meta = extracted.metadata  # the source models, read from the graph
    assert meta["ss_sd_model_name"] == "LLLiteKitTest_TinyCheckpoint"
    assert json.loads(meta["ss_lora_tool_args"])["tuned"] == "LLLiteKitTest_TinyCheckpoint + tools_sd15_b.safetensors"
    assert _loads_in_core(tiny, name[0], "sd15", caplog) > 0


def test_core_lora_loader_and_checkpoint_save_merge_as_sd_scripts(graph, loras, tiny, comfy_dirs):
    """Issue 12 item 7: no merge-into-checkpoint node is needed. Core's LoraLoader + CheckpointSave
    writes W + ratio * up @ down * alpha / dim into every targeted layer (U-Net and text encoder),
    which is what sd-scripts' merge_lora.py merge_to_sd_model computes; other weights are unchanged."""
    import comfy.lora

    def save(prefix, lora_steps):
        prompt = {**_checkpoint("sd15"), **lora_steps, "9": {"class_type": "CheckpointSave", "inputs": {
            "model": [list(lora_steps)[-1] if lora_steps else "1", 0], "clip": [list(lora_steps)[-1] if lora_steps else "1", 1],
            "vae": ["1", 2], "filename_prefix": f"checkpoints/{prefix}"}}}
        graph.run(prompt)
        (path,) = (comfy_dirs / "output" / "checkpoints").glob(f"{prefix}_*.safetensors")
        return safetensors.torch.load_file(str(path))

    ratio = 0.7
    base = save("merge_base", {})
    merged = save("merge_lora", {"2": {"class_type": "LoraLoader", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_name": "tools_sd15_a.safetensors", "strength_model": ratio,
        "strength_clip": ratio}}})
    lora = _load(loras / "tools_sd15_a.safetensors")
    model, clip = tiny.build_model("sd15"), tiny.build_clip("sd15")
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, comfy.lora.model_lora_keys_unet(model.model, {}))
    # core's key for a kohya name -> the key CheckpointSave writes (SD1.x layout)
    saved = {n: "model." + key_map[n] if key_map[n].startswith("diffusion_model.")
             else key_map[n].replace("clip_l.", "cond_stage_model.", 1) for n in lora.modules}
    assert any(n.startswith("lora_te_") for n in saved) and any(p["down"].dim() == 4 for p in lora.modules.values())
    for n, key in saved.items():
        want = base[key].float() + ratio * lora.delta(n).reshape(base[key].shape)  # sd-scripts merge_to_sd_model
        torch.testing.assert_close(merged[key].float(), want, rtol=1e-5, atol=1e-6, msg=n)
    untouched = set(base) - set(saved.values())
    assert untouched and all(torch.equal(base[k], merged[k]) for k in untouched)
