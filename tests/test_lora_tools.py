"""LoRA tools (training/lora/tools): merge, resize, extract, DyLoRA cut, block weights,
inspect - their math on LoRAs of the tiny SD1.5 / SDXL models, and every written file loads
in core ComfyUI's LoraLoader with every key used."""
import json

import pytest
import torch

import comfy.model_management
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lllite_kit.training.lora.tools import block_weights, dylora, extract, inspect, merge, resize
from lllite_kit.training.lora.tools.common import LoRA
from lora_helpers import load_in_core, randomize, text_encoders


@pytest.fixture(scope="module")
def models(tiny):
    """family -> (model, clip), built once."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = (tiny.build_model(family), tiny.build_clip(family))
        return cache[family]

    yield get
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def make_lora(models):
    """(family, seed, **LoRAConfig options) -> an in-memory LoRA of the tiny model with random
    non-zero weights and the metadata the trainer writes."""
    def make(family, seed=5, **options):
        model, clip = models(family)
        adapter = LoRAAdapter(LoRAConfig(seed=seed, **options), model.model.model_config)
        adapter.attach(model.model.diffusion_model, text_encoders(clip, family))
        try:
            randomize(adapter, seed=seed)
            tensors, meta = adapter.state_dict(), adapter.metadata()
        finally:
            adapter.detach()
        from lllite_kit.training.lora.file import split_modules
        modules = {n: {k: v.clone().float() for k, v in p.items()} for n, p in split_modules(tensors, "test").items()}
        return LoRA(f"{family}_{seed}", modules, meta)
    return make


def _assert_deltas(lora: LoRA, expected: dict[str, torch.Tensor], rtol=1e-5):
    assert set(lora.modules) == set(expected)
    for n, want in expected.items():
        got = lora.delta(n)
        assert got.shape == want.shape, n
        err = float((got - want).norm()) / max(float(want.norm()), 1e-12)
        assert err <= rtol, f"{n}: relative error {err:.2e}"


def _load_in_core(lora: LoRA, family, models, comfy_dirs, caplog, filename):
    """Write the LoRA, load it with core's LoraLoader: no "not loaded" warning and one patch
    per module. Returns the metadata read back."""
    path = comfy_dirs / "models" / "loras" / filename
    lora.save(str(path))
    model, clip = models(family)
    load_in_core(model, clip, filename, list(lora.modules), caplog)
    return LoRA.load(str(path))


# --- merge ---------------------------------------------------------------------------------

def test_concat_equals_sum_of_differences_exactly(make_lora, models, comfy_dirs, caplog):
    a = make_lora("sdxl", 1, dim=3, alpha=2.0, conv_dim=2, conv_alpha=1.0)
    b = make_lora("sdxl", 2, dim=2, alpha=4.0)
    merged = merge.merge_concat([a, b], [0.7, -0.5], block_ratios=[None, "1,1,0,1,1,1,1,1,1,1,1,1"])
    mult = block_weights.module_multipliers(b.modules, block_weights.parse("1,1,0,1,1,1,1,1,1,1,1,1", "sdxl"), "sdxl")
    assert 0.0 in mult.values()
    expected = {}
    for n in merged.modules:
        d = 0.7 * a.delta(n) if n in a.modules else 0
        if n in b.modules and mult[n]:
            d = d + (-0.5 * mult[n]) * b.delta(n)
        expected[n] = d
    _assert_deltas(merged, expected, rtol=1e-6)
    n = next(n for n in a.modules if n in b.modules and mult[n])
    assert merged.modules[n]["down"].shape[0] == 5  # rank = sum of ranks
    meta = _load_in_core(merged, "sdxl", models, comfy_dirs, caplog, "tools_concat.safetensors").metadata
    facts = json.loads(meta["ss_lora_tool_args"])
    assert meta["ss_lora_tool"] == "merge_concat" and facts["ratios"] == [0.7, -0.5]
    assert [s["name"] for s in facts["sources"]] == ["sdxl_1", "sdxl_2"]
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_weighted_merge_is_sd_scripts_formula_and_needs_equal_ranks(make_lora):
    a = make_lora("sd15", 1, dim=2, alpha=1.0)
    b = make_lora("sd15", 2, dim=2, alpha=4.0)
    merged = merge.merge_weighted([a, b], [0.5, -2.0], block_ratios=["", None])  # blank: no block weights
    n = next(iter(a.modules))
    s_b = (4.0 / 1.0) ** 0.5 * -2.0  # sqrt(alpha / base_alpha) * ratio
    torch.testing.assert_close(merged.modules[n]["up"], a.modules[n]["up"] * 0.5 + b.modules[n]["up"] * abs(s_b))
    torch.testing.assert_close(merged.modules[n]["down"], a.modules[n]["down"] * 0.5 + b.modules[n]["down"] * s_b)
    assert float(merged.modules[n]["alpha"]) == 1.0
    with pytest.raises(ValueError, match="equal ranks"):
        merge.merge_weighted([a, make_lora("sd15", 3, dim=3)])


def test_svd_merge_error_is_energy_of_dropped_singular_values(make_lora, models, comfy_dirs, caplog):
    a = make_lora("sd15", 1, dim=3, conv_dim=2, conv_alpha=1.0)
    b = make_lora("sd15", 2, dim=4, alpha=2.0)
    merged = merge.merge_svd([a, b], [1.0, 0.6], new_rank=2, new_conv_rank=1, clamp_quantile=None)
    for n, parts in merged.modules.items():
        total = (a.delta(n) if n in a.modules else 0) + (0.6 * b.delta(n) if n in b.modules else 0)
        mat = total.reshape(total.shape[0], -1).double()
        k = parts["down"].shape[0]
        assert k == (1 if parts["down"].dim() == 4 and parts["down"].shape[-1] == 3 else 2)
        s = torch.linalg.svdvals(mat)
        err_sq = float((mat - merged.delta(n).reshape(mat.shape).double()).pow(2).sum())
        assert err_sq == pytest.approx(float(s[k:].pow(2).sum()), rel=1e-3, abs=1e-9 * float(s.pow(2).sum())), n
    clamped = merge.merge_svd([a, b], [1.0, 0.6], new_rank=2)  # sd-scripts' default clamp at 0.99
    assert any(not torch.equal(clamped.modules[n]["up"], merged.modules[n]["up"]) for n in merged.modules)
    meta = _load_in_core(merged, "sd15", models, comfy_dirs, caplog, "tools_svd.safetensors").metadata
    assert (meta["ss_network_dim"], json.loads(meta["ss_lora_tool_args"])["new_conv_rank"]) == ("2", 1)


# --- resize --------------------------------------------------------------------------------

def test_resize_to_full_rank_is_lossless(make_lora, models, comfy_dirs, caplog):
    lora = make_lora("sdxl", 3, dim=4, alpha=2.0, conv_dim=3, conv_alpha=1.5)
    resized, report = resize.resize(lora, new_rank=4, new_conv_rank=3)
    _assert_deltas(resized, {n: lora.delta(n) for n in lora.modules}, rtol=1e-5)
    assert all(r.fro_retained == pytest.approx(1.0) and r.new_rank == r.old_rank for r in report)
    smaller, report = resize.resize(lora, new_rank=2, new_conv_rank=1)
    for r in report:
        s = torch.linalg.svdvals(lora.delta(r.name).reshape(lora.delta(r.name).shape[0], -1).double())
        assert r.fro_retained == pytest.approx(float(s[:r.new_rank].norm() / s.norm()), rel=1e-4)
    assert {r.new_rank for r in report} == {1, 2}
    per_block = resize.rank_per_block(report, "sdxl")  # the node's bar chart: 3x3 convs kept 1, the rest 2
    assert list(per_block)[0] == "BASE" and per_block["BASE"] == 2.0
    assert all(1.0 <= v <= 2.0 for v in per_block.values()) and min(per_block.values()) < 2.0
    text = resize.report_text(report, 1000, 500)
    assert "Average Frobenius norm retention" in text and "(50.0%)" in text
    meta = _load_in_core(smaller, "sdxl", models, comfy_dirs, caplog, "tools_resized.safetensors").metadata
    assert meta["ss_training_comment"].startswith("dimension is resized from 4 to 2 (conv: 1)")


def _known_spectrum_lora(S):
    """One Linear module (16 x 20) whose difference has singular values S."""
    g = torch.Generator().manual_seed(0)
    q_out = torch.linalg.qr(torch.randn(16, len(S), generator=g))[0]
    q_in = torch.linalg.qr(torch.randn(20, len(S), generator=g))[0]
    parts = {"up": q_out * torch.tensor(S), "down": q_in.T.contiguous(), "alpha": torch.tensor(float(len(S)))}
    return LoRA("known", {"lora_unet_input_blocks_4_1_proj_in": parts}, {})


@pytest.mark.parametrize("method,param,cap,want", [
    # S = 8 4 2 1 .5 .25; sd-scripts: rank = clamp(index, 1, len(S) - 1) + 1 with
    ("sv_ratio", 5.0, 6, 4),  # index = #(S > 8 / 5) = 3
    ("sv_fro", 0.9, 6, 3),  # cumsum(S^2)/sum = .750 .938 ... ; searchsorted(.81) = 1, + 1 -> index 2
    ("sv_cumulative", 0.9, 6, 5),  # cumsum(S)/sum = .508 .762 .889 .952 ...; searchsorted(.9) = 3, + 1 -> 4
    ("sv_cumulative", 0.9, 3, 3),  # capped at new_rank
    ("sv_ratio", 1000.0, 8, 6),  # every value kept; never above the old rank
])
def test_dynamic_resize_picks_the_criterion_rank(method, param, cap, want):
    lora = _known_spectrum_lora([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    resized, (r,) = resize.resize(lora, new_rank=cap, dynamic_method=method, dynamic_param=param)
    assert r.new_rank == want
    assert r.new_alpha == pytest.approx(want)  # alpha / rank (= 1) kept
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    assert r.fro_retained == pytest.approx(float(s[:want].norm() / s.norm()), rel=1e-5)
    assert resized.metadata["ss_training_comment"].startswith(f"Dynamic resize with {method}: {param}")


# --- extract -------------------------------------------------------------------------------

@pytest.mark.parametrize("family,method", [("sdxl", "lowrank"), ("sd15", "exact")])
def test_extract_recovers_the_difference(family, method, make_lora, models, comfy_dirs, caplog):
    lora = make_lora(family, 4, dim=2, alpha=1.0, conv_dim=2, conv_alpha=2.0)
    model, clip = models(family)
    base = extract.model_weights(model.model.diffusion_model, text_encoders(clip, family), family,
                                 model.model.model_config.unet_config, conv=True)
    base = {n: w.clone() for n, w in base.items()}
    assert set(lora.modules) <= set(base)
    tuned = {n: w + lora.delta(n) if n in lora.modules else w.clone() for n, w in base.items()}
    out, errors = extract.extract(base, tuned, dim=2, conv_dim=2, clamp_quantile=None, method=method, family=family,
                                  sources=("base.safetensors", "tuned.safetensors"))
    _assert_deltas(out, {n: tuned[n] - base[n] for n in out.modules}, rtol=2e-5)
    assert set(lora.modules) <= set(out.modules)
    assert max(errors[n] for n in lora.modules) < 2e-5
    meta = _load_in_core(out, family, models, comfy_dirs, caplog, f"tools_extract_{family}.safetensors").metadata
    assert json.loads(meta["ss_lora_tool_args"])["tuned"] == "tuned.safetensors"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2.0"}

    # text encoders within min_diff are left out; without conv_dim no 3x3 module is extracted
    some = [n for n in base if n.startswith("lora_te")] + [n for n in base if n.startswith("lora_unet_")][:40]
    small = {n: base[n] + 1e-3 if n.startswith("lora_te") else tuned[n] for n in some}
    out, _ = extract.extract({n: base[n] for n in some}, small, dim=2, min_diff=0.01, family=family)
    assert out.modules
    assert not any(n.startswith("lora_te") for n in out.modules)
    assert not any(p["down"].dim() == 4 and p["down"].shape[-1] == 3 for p in out.modules.values())


# --- DyLoRA --------------------------------------------------------------------------------

def test_dylora_cut_keeps_the_first_rows(make_lora, models, comfy_dirs, caplog):
    lora = make_lora("sd15", 6, dim=4, alpha=4.0, unit=2)
    assert dylora.unit_of(lora) == 2
    cut = dylora.cut(lora, 2)
    for n, p in lora.modules.items():
        assert torch.equal(cut.modules[n]["down"], p["down"][:2])
        assert torch.equal(cut.modules[n]["up"], p["up"][:, :2])
        assert float(cut.modules[n]["alpha"]) == float(p["alpha"])
    with pytest.raises(ValueError, match="multiple of the unit 2"):
        dylora.cut(lora, 3)
    with pytest.raises(ValueError, match="above the file's rank 4"):
        dylora.cut(lora, 6)
    meta = _load_in_core(cut, "sd15", models, comfy_dirs, caplog, "tools_dylora_cut.safetensors").metadata
    assert meta["ss_network_dim"] == "2" and meta["ss_training_comment"].startswith("split from DyLoRA, rank 4 to 2")


# --- block weights -------------------------------------------------------------------------

INSPIRE_SD17 = {  # ComfyUI-Inspire-Pack resources/lbw-preset.txt (SD-*), = A1111 lora-block-weight
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0", "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0", "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
}
INSPIRE_SDXL12 = {"INALL": "1,1,1,1,1,0,0,0,0,0,0,0", "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1"}


def test_block_weight_presets_match_the_extensions():
    for name, values in INSPIRE_SD17.items():
        assert block_weights.parse(name, "sd15") == [float(v) for v in values.split(",")], name
    for name, values in INSPIRE_SDXL12.items():
        assert block_weights.parse(name, "sdxl") == [float(v) for v in values.split(",")], name
    assert len(block_weights.parse("MIDD", "sdxl", length=20)) == 20
    with pytest.raises(ValueError, match="takes 17, 26, 12 values, got 20"):
        block_weights.parse(",".join(["1"] * 20), "sd15")


def test_block_weights_ones_identity_zero_removes_the_block(make_lora, models, comfy_dirs, caplog):
    lora = make_lora("sdxl", 7, dim=2, conv_dim=2)
    same = block_weights.apply(lora, "ALL")
    _assert_deltas(same, {n: lora.delta(n) for n in lora.modules}, rtol=0)
    vec = [1.0] * 20
    vec[5] = 0.0  # IN04
    vec[0] = 0.5  # BASE: text encoders at half
    out = block_weights.apply(lora, vec)
    in04 = {n for n in lora.modules if n.startswith("lora_unet_input_blocks_4_")}
    assert in04 and set(out.modules) == set(lora.modules) - in04
    for n in out.modules:
        torch.testing.assert_close(out.delta(n), lora.delta(n) * (0.5 if n.startswith("lora_te") else 1.0), rtol=0, atol=0)
    raw = block_weights.scale_state_dict(lora.tensors(), vec, "sdxl")
    assert {k.split(".")[0] for k in raw} == set(out.modules)
    _load_in_core(out, "sdxl", models, comfy_dirs, caplog, "tools_lbw.safetensors")


def test_sd15_block_labels():
    label = block_weights.block_label
    assert label("lora_unet_down_blocks_0_attentions_1_proj_in", "sd15") == "IN02"
    assert label("lora_unet_down_blocks_1_downsamplers_0_conv", "sd15") == "IN06"
    assert label("lora_unet_up_blocks_1_attentions_0_proj_in", "sd15") == "OUT03"
    assert label("lora_unet_up_blocks_2_upsamplers_0_conv", "sd15") == "OUT08"
    assert label("lora_unet_mid_block_attentions_0_proj_in", "sd15") == "MID"
    assert label("lora_te1_text_model_encoder_layers_0_mlp_fc1", "sdxl") == "BASE"
    assert label("lora_unet_output_blocks_5_1_proj_out", "sdxl") == "OUT05"


# --- inspect -------------------------------------------------------------------------------

def test_inspect_ranks_alphas_and_block_norms(make_lora):
    lora = make_lora("sdxl", 8, dim=3, alpha=1.5)
    lora.metadata["ss_tag_frequency"] = json.dumps({"1_a": {"cat": 3, " dog": 1}, "2_b": {"cat": 2}})
    info = inspect.inspect(lora)
    assert info["tags"] == {"cat": 5, "dog": 1}
    for n, m in info["modules"].items():
        assert m["norm"] == pytest.approx(float(lora.delta(n).norm()), rel=1e-4)
        assert (m["rank"], m["alpha"]) == (3, 1.5)
    total = sum(m["norm"] ** 2 for m in info["modules"].values())
    assert sum(b["norm"] ** 2 for b in info["blocks"].values()) == pytest.approx(total, rel=1e-6)
    assert list(info["blocks"])[0] == "BASE" and info["blocks"]["BASE"]["ranks"] == [3]
    assert info["metadata"]["ss_network_dim"] == "3"
