"""DoRA files in the LoRA tools with their base model (issue 12): the nodes' model/clip inputs and
the command line's --base give the weights a DoRA module's difference depends on; what merge
(concat, svd), resize and extract (base vs the LoraLoader-patched model) then write carries the
change core's LoraLoader makes (patched weight - base weight) within 1e-5."""
import sys

import pytest
import safetensors.torch
import torch

import comfy.lora
import comfy.model_management
import comfy.sd
from checkpoint_files import detectable_sd15
from conftest import REPO
from graph_runner import GraphError
from lllite_kit.training.lora.tools import extract
from lllite_kit.training.lora.tools.common import LoRA
from lora_helpers import text_encoders

sys.path.insert(0, str(REPO / "scripts"))
import lora_tools as cli  # noqa: E402

TOL = 1e-5


def _pick(weights: dict[str, torch.Tensor]) -> list[str]:
    """One targeted layer of each kind present: text-encoder linear, U-Net linear, 3x3 conv, 1x1 conv."""
    kinds = {}
    for n, w in weights.items():
        kind = ("te" if n.startswith("lora_te") else "lin") if w.dim() == 2 else f"conv{w.shape[-1]}"
        kinds.setdefault(kind, n)
    return [kinds[k] for k in ("te", "lin", "conv3", "conv1") if k in kinds]


def _dora(weights: dict[str, torch.Tensor], names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """kohya up/down + dora_scale per module: magnitudes near the layer's row norms (as DoRA
    starts), on the input axis for the first linear layer (core's other normalization)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, n in enumerate(names):
        w = weights[n]
        ones = [1] * (w.dim() - 2)
        out[f"{n}.lora_up.weight"] = torch.randn(w.shape[0], 2, *ones, generator=g) * 0.3
        out[f"{n}.lora_down.weight"] = torch.randn(2, *w.shape[1:], generator=g) * 0.3
        out[f"{n}.alpha"] = torch.tensor(1.0)
        if i == 0 and w.dim() == 2:
            scale = torch.rand(1, w.shape[1], generator=g) + 0.5
        else:
            scale = w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], 1, *ones) * (
                1 + 0.2 * torch.rand(w.shape[0], 1, *ones, generator=g))
        out[f"{n}.dora_scale"] = scale
    return out


def _core_change(model, clip, tensors: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """kohya name -> what core's loader adds to that layer at strength 1 (comfy.lora.calculate_weight
    on the patches load_lora_for_models attaches), on the unpatched weights of model / clip."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = dict(model.model.state_dict())
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        weights.update(clip.cond_stage_model.state_dict())
    model_lora, clip_lora = comfy.sd.load_lora_for_models(model, clip, tensors, 1.0, 1.0)
    patches = {**model_lora.patches, **(clip_lora.patcher.patches if clip_lora is not None else {})}
    out = {}
    for n in names:
        key = key_map[n]
        w = weights[key].detach().float().clone()
        out[n] = comfy.lora.calculate_weight(patches[key], w.clone(), key) - w
    return out


def _assert_carries(lora: LoRA, want: dict[str, torch.Tensor], what: str) -> None:
    for n, change in want.items():
        got = lora.delta(n).reshape(change.shape)
        assert float((got - change).norm() / change.norm()) < TOL, f"{what}: {n}"


@pytest.fixture(scope="module")
def sd15_dora(tiny, comfy_dirs):
    """(file name in the loras folder, kohya names, core's change per name) on the tiny SD1.5 model."""
    model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
    weights = extract.model_weights(model.model.diffusion_model, text_encoders(clip, "sd15"), "sd15",
                                    model.model.model_config.unet_config, conv=True)
    names = _pick(weights)
    assert len(names) == 4 and names[0].startswith("lora_te_")
    tensors = _dora(weights, names, seed=1)
    safetensors.torch.save_file(tensors, str(comfy_dirs / "models" / "loras" / "dora_sd15.safetensors"))
    yield "dora_sd15.safetensors", names, _core_change(model, clip, tensors, names)
    comfy.model_management.unload_all_models()


def _merge(mode: str, ratio_2: float, name: str) -> dict:
    return {"class_type": "LLLiteKit_MergeLoRAs", "inputs": {
        "lora_1": "dora_sd15.safetensors", "ratio_1": 1.0, "block_ratios_1": "", "lora_2": "dora_sd15.safetensors",
        "ratio_2": ratio_2, "block_ratios_2": "", "lora_3": "none", "ratio_3": 1.0, "block_ratios_3": "", "mode": mode,
        "new_rank": 1024, "new_conv_rank": 0, "clamp_quantile": 1.0, "svd_method": "exact", "output_name": name,
        "if_exists": "overwrite", "save_precision": "float", "model": ["1", 0], "clip": ["1", 1]}}


def test_nodes_with_the_base_model_carry_cores_dora_change(graph, sd15_dora, comfy_dirs):
    file, names, want = sd15_dora
    prompt = {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "2": _merge("concat", 0.5, "dora_concat"),
        "3": _merge("svd", 0.0, "dora_svd"),
        "4": {"class_type": "LLLiteKit_ResizeLoRA", "inputs": {
            "lora_name": file, "new_rank": 1024, "new_conv_rank": 0, "dynamic_method": "none", "dynamic_param": 0.9,
            "output_name": "dora_resized", "if_exists": "overwrite", "save_precision": "float",
            "model": ["1", 0], "clip": ["1", 1]}},
        # the converter users had before: apply it with core, extract base -> patched at full rank
        "5": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": file,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "6": {"class_type": "LLLiteKit_ExtractLoRA", "inputs": {
            "model_base": ["1", 0], "model_tuned": ["5", 0], "clip_base": ["1", 1], "clip_tuned": ["5", 1],
            "dim": 1024, "conv_dim": 1024, "clamp_quantile": 1.0, "min_diff": 0.0, "svd_method": "exact",
            "output_name": "dora_extracted", "if_exists": "overwrite", "save_precision": "float"}},
    }
    graph.run(prompt)
    loras = comfy_dirs / "models" / "loras"
    concat = LoRA.load(str(loras / "dora_concat.safetensors"))
    _assert_carries(concat, {n: 1.5 * c for n, c in want.items()}, "concat 1 + 0.5")
    assert '"format": "dora"' in concat.metadata["ss_lora_tool_args"]
    _assert_carries(LoRA.load(str(loras / "dora_svd.safetensors")), want, "svd at full rank")
    _assert_carries(LoRA.load(str(loras / "dora_resized.safetensors")), want, "resize at full rank")
    _assert_carries(LoRA.load(str(loras / "dora_extracted.safetensors")), want, "extract base -> patched")


def test_nodes_refuse_a_dora_file_without_its_base(graph, sd15_dora):
    file, _, _ = sd15_dora
    resize = {"lora_name": file, "new_rank": 4, "new_conv_rank": 0, "dynamic_method": "none", "dynamic_param": 0.9,
              "output_name": "dora_resized", "if_exists": "overwrite", "save_precision": "float"}
    with pytest.raises(GraphError, match="DoRA module: its difference depends on the base model's weights; give the model"):
        graph.run({"1": {"class_type": "LLLiteKit_ResizeLoRA", "inputs": resize}})
    with pytest.raises(GraphError, match="text-encoder modules need its CLIP too"):
        graph.run({"1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
                   "2": {"class_type": "LLLiteKit_InspectLoRA", "inputs": {"lora_name": file, "model": ["1", 0]}}})


def test_block_weight_loader_loads_dora_at_its_blocks_weight(graph, sd15_dora, tiny):
    """All ones: core's LoraLoader's change; BASE 0.5 and the U-Net modules' block 0: half the
    text encoder's change (core scales DoRA's whole change by the strength), no U-Net patch."""
    from lllite_kit.training.lora.tools import block_weights

    file, names, want = sd15_dora
    label = block_weights.block_label(names[1], "sd15")
    assert {block_weights.block_label(n, "sd15") for n in names[1:]} == {label}  # the U-Net modules share a block
    vector = [0.5 if b == "BASE" else 0.0 if b == label else 1.0 for b in block_weights.LAYOUTS[17]]
    loaders = {str(i): {"class_type": "LLLiteKit_LoraLoaderBlockWeight", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_name": file, "strength_model": 1.0, "strength_clip": 1.0,
        "preset": preset, "block_vector": vec}} for i, (preset, vec) in
        ((2, ("ALL", "")), (3, ("custom", ",".join(f"{v:g}" for v in vector))))}
    previews = {str(10 + i): {"class_type": "PreviewAny", "inputs": {"source": [n, k]}}
                for i, (n, k) in enumerate([("2", 0), ("2", 1), ("3", 0), ("3", 1)])}
    graph.run({"1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
               **loaders, **previews})
    model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, comfy.lora.model_lora_keys_unet(model.model, {}))
    weights = {**model.model.state_dict(), **clip.cond_stage_model.state_dict()}

    def change(node: str) -> dict[str, torch.Tensor]:
        out_model, out_clip = graph.node_outputs(node)
        patches = {**out_model[0].patches, **out_clip[0].patcher.patches}
        by_key = {key_map[n]: n for n in names}
        return {by_key[k]: comfy.lora.calculate_weight(p, weights[k].float().clone(), k) - weights[k].float()
                for k, p in patches.items()}

    _assert_carries_changes(change("2"), want)
    _assert_carries_changes(change("3"), {names[0]: 0.5 * want[names[0]]})


def _assert_carries_changes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for n, change in want.items():
        assert float((got[n] - change).norm() / change.norm()) < TOL, n


def test_cli_base_checkpoint_carries_cores_dora_change(tiny, tmp_path, capsys):
    """--base: a U-Net-only SD1.5 checkpoint file, read by core's checkpoint loader."""
    unet = detectable_sd15(tiny, 0)
    ckpt = tmp_path / "base.safetensors"
    safetensors.torch.save_file({f"model.diffusion_model.{k}": v.contiguous()
                                 for k, v in unet.diffusion_model.state_dict().items()}, str(ckpt))
    weights = extract.model_weights(unet.diffusion_model, None, "sd15", unet.model_config.unet_config, conv=True)
    names = _pick(weights)
    tensors = _dora(weights, names, seed=2)
    dora = tmp_path / "dora.safetensors"
    safetensors.torch.save_file(tensors, str(dora))
    model, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=False, output_clip=False)
    want = _core_change(model, None, tensors, names)

    out = ["--output_dir", str(tmp_path), "--save_precision", "float", "--base", str(ckpt)]
    assert cli.main(["merge", str(dora), str(dora), "--ratios", "1", "-0.5", "--output_name", "m", *out]) == 0
    _assert_carries(LoRA.load(str(tmp_path / "m.safetensors")), {n: 0.5 * c for n, c in want.items()}, "cli concat")
    capsys.readouterr()
    assert cli.main(["resize", str(dora), "--new_rank", "1024", "--output_name", "r", *out]) == 0
    assert "Average Frobenius norm retention: 100.00%" in capsys.readouterr().out
    _assert_carries(LoRA.load(str(tmp_path / "r.safetensors")), want, "cli resize at full rank")

    assert cli.main(["resize", str(dora), "--new_rank", "4", *out[:-2]]) == 1
    assert "--base on the command line" in capsys.readouterr().err
    comfy.model_management.unload_all_models()
