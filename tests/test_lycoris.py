"""LyCORIS LoHa / LoKr and DoRA files (training/lora/tools/lycoris.py): our full weight
difference of each module equals the change core ComfyUI's LoraLoader makes to the tiny model,
the exact kohya factors reproduce it, and the tools take (or clearly refuse) such files."""
import pytest
import safetensors.torch
import torch

import comfy.lora
import comfy.model_management
from lllite_kit.training.lora.tools import block_weights, lycoris, merge, resize
from lllite_kit.training.lora.tools.common import LoRA
from lora_helpers import load_in_core


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip = tiny.build_model("sd15"), tiny.build_clip("sd15")
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, comfy.lora.model_lora_keys_unet(model.model, {}))
    yield model, clip, key_map
    comfy.model_management.unload_all_models()


def _weights(model, clip):
    """model state-dict key -> weight (U-Net keys as in model.patches, CLIP keys as in clip.patcher)."""
    return {**{k: v.detach().clone() for k, v in model.model.state_dict().items()},
            **{k: v.detach().clone() for k, v in clip.cond_stage_model.state_dict().items()}}


def _kohya_sd15(name, key, weights) -> bool:
    """A name sd-scripts writes for SD1.x (diffusers-style U-Net names; core maps ldm-style too)."""
    return (isinstance(key, str) and key in weights and name.startswith(("lora_te_", "lora_unet_"))
            and (name.startswith("lora_te_") or any(b in name for b in ("down_blocks", "up_blocks", "mid_block"))))


def _layers(key_map, weights):
    """One kohya name per layer kind: a U-Net linear, a text-encoder linear, a 3x3 conv, a 1x1 conv."""
    pick = {}
    for name, key in key_map.items():
        if not _kohya_sd15(name, key, weights):
            continue
        w = weights[key]
        kind = ("te" if name.startswith("lora_te") else "lin") if w.dim() == 2 else (
            "conv3" if w.dim() == 4 and w.shape[-1] == 3 and w.shape[1] % 2 == 0 else
            "conv1" if w.dim() == 4 and w.shape[-1] == 1 else None)
        if kind and kind not in pick and w.shape[0] % 2 == 0 and w.shape[1] % 2 == 0:
            pick[kind] = name
    assert set(pick) == {"te", "lin", "conv3", "conv1"}
    return pick


def _modules(pick, key_map, weights):
    """kohya name -> (format label, parts): every factor layout core reads, on the tiny layers."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    out = {}
    o, i = weights[key_map[pick["lin"]]].shape
    out[pick["lin"]] = ("loha", {"hada_w1_a": r(o, 2), "hada_w1_b": r(2, i), "hada_w2_a": r(o, 3),
                                 "hada_w2_b": r(3, i), "alpha": torch.tensor(1.5)})
    o, i = weights[key_map[pick["te"]]].shape
    out[pick["te"]] = ("lokr", {"lokr_w1": r(2, 2), "lokr_w2_a": r(o // 2, 3), "lokr_w2_b": r(3, i // 2),
                                "alpha": torch.tensor(2.0)})
    o, i, _, _ = weights[key_map[pick["conv3"]]].shape
    out[pick["conv3"]] = ("loha tucker", {
        "hada_t1": r(2, 2, 3, 3), "hada_w1_a": r(2, o), "hada_w1_b": r(2, i),
        "hada_t2": r(2, 2, 3, 3), "hada_w2_a": r(2, o), "hada_w2_b": r(2, i), "alpha": torch.tensor(1.0)})
    o, i, _, _ = weights[key_map[pick["conv1"]]].shape
    w = weights[key_map[pick["conv1"]]]
    out[pick["conv1"]] = ("dora", {"lora_up.weight": r(o, 2, 1, 1), "lora_down.weight": r(2, i, 1, 1),
                                   "alpha": torch.tensor(1.0),
                                   "dora_scale": w.reshape(o, -1).norm(dim=1).reshape(o, 1, 1, 1) * 1.1})
    return out


def _more_modules(key_map, weights, used):
    """The other layouts: a 2-D conv LoHa (shape from the name), LoKr with low-rank w1 / full w2,
    4-D w2, Tucker t2, and DoRA on the input axis."""
    g = torch.Generator().manual_seed(4)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    free = [(n, weights[k]) for n, k in key_map.items()
            if _kohya_sd15(n, k, weights) and n.startswith("lora_unet") and n not in used]
    lin = [n for n, w in free if w.dim() == 2 and w.shape[0] % 2 == 0 and w.shape[1] % 2 == 0]
    conv = [n for n, w in free if w.dim() == 4 and w.shape[-1] == 3 and w.shape[0] % 2 == 0 and w.shape[1] % 2 == 0]
    out = {}
    o, i = weights[key_map[lin[0]]].shape
    out[lin[0]] = ("lokr low-rank w1", {"lokr_w1_a": r(2, 1), "lokr_w1_b": r(1, 2), "lokr_w2": r(o // 2, i // 2),
                                        "alpha": torch.tensor(3.0)})
    o, i = weights[key_map[lin[1]]].shape
    out[lin[1]] = ("dora input axis", {"lora_up.weight": r(o, 2), "lora_down.weight": r(2, i), "alpha": torch.tensor(2.0),
                                       "dora_scale": torch.rand(1, i, generator=g) + 0.5})
    o, i, _, _ = weights[key_map[conv[0]]].shape
    out[conv[0]] = ("loha 2-D conv", {"hada_w1_a": r(o, 2), "hada_w1_b": r(2, i * 9), "hada_w2_a": r(o, 2),
                                      "hada_w2_b": r(2, i * 9)})
    o, i, _, _ = weights[key_map[conv[1]]].shape
    out[conv[1]] = ("lokr 4-D w2", {"lokr_w1": r(2, 2), "lokr_w2": r(o // 2, i // 2, 3, 3)})
    o, i, _, _ = weights[key_map[conv[2]]].shape
    out[conv[2]] = ("lokr tucker", {"lokr_w1": r(2, 2), "lokr_t2": r(2, 2, 3, 3), "lokr_w2_a": r(2, o // 2),
                                    "lokr_w2_b": r(2, i // 2), "alpha": torch.tensor(1.0)})
    return out


def _core_differences(model, clip, name, weights, caplog):
    """state-dict key -> weight change core's LoraLoader patches in (strength 1), computed by
    core's own comfy.lora.calculate_weight on the patches the loader attached."""
    import logging

    import nodes

    caplog.clear()
    caplog.set_level(logging.WARNING)
    model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    patches = {**model_lora.patches, **clip_lora.patcher.patches}
    return {k: comfy.lora.calculate_weight(p, weights[k].clone(), k) - weights[k] for k, p in patches.items()}


def test_full_difference_equals_core_loaders_change(sd15, comfy_dirs, caplog):
    model, clip, key_map = sd15
    weights = _weights(model, clip)
    pick = _layers(key_map, weights)
    modules = _modules(pick, key_map, weights)
    modules.update(_more_modules(key_map, weights, set(modules)))
    tensors = {f"{n}.{part}": v.contiguous() for n, (_, parts) in modules.items() for part, v in parts.items()}
    path = comfy_dirs / "models" / "loras" / "lycoris_mix.safetensors"
    safetensors.torch.save_file(tensors, str(path))

    core = _core_differences(model, clip, path.name, weights, caplog)
    base = {n: weights[key_map[n]] for n in modules}
    lora = LoRA.load(str(path), base=base)
    assert lora.source_format == "dora+loha+lokr"
    assert set(core) == {key_map[n] for n in modules}
    for n, (label, parts) in modules.items():
        want = core[key_map[n]]
        if label == "lokr tucker":
            # core 0.30.0 logs "ERROR lokr ... view size is not compatible" (torch.kron on its
            # non-contiguous einsum) and leaves the layer unpatched; ours is LyCORIS' kron(w1, w2)
            assert float(want.abs().max()) == 0 and "ERROR lokr" in caplog.text
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", parts["lokr_t2"], parts["lokr_w2_b"], parts["lokr_w2_a"])
            want = torch.kron(parts["lokr_w1"][:, :, None, None], w2.contiguous()) * (1.0 / 2)
        got = lycoris.difference(parts, want.shape, base[n], n)
        assert float((got - want).norm() / want.norm()) < 1e-5, label
        if "dora_scale" not in parts:
            assert lycoris.layer_shape(n, parts) == tuple(want.shape), label  # no model needed
        # the exact kohya factors every tool works on
        assert lora.delta(n).shape == want.shape, label
        assert float((lora.delta(n) - want).norm() / want.norm()) < 2e-5, label

    with pytest.raises(ValueError, match="DoRA module: its difference depends on the base model's weights; give the model it applies to"):
        LoRA.load(str(path))


def test_tools_take_loha_and_lokr_and_refuse_them_where_they_need_kohya(sd15, comfy_dirs, caplog):
    model, clip, key_map = sd15
    weights = _weights(model, clip)
    pick = _layers(key_map, weights)
    modules = {n: m for n, m in _modules(pick, key_map, weights).items() if m[0] != "dora"}
    tensors = {f"{n}.{part}": v.contiguous() for n, (_, parts) in modules.items() for part, v in parts.items()}
    path = comfy_dirs / "models" / "loras" / "lycoris_tools.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    lyco = LoRA.load(str(path))
    want = {n: lycoris.difference(parts, weights[key_map[n]].shape) for n, (_, parts) in modules.items()}

    # concat: exact sum of the differences; the written kohya file loads in core with every key
    kohya_part = {n: {"down": torch.randn(2, *p["down"].shape[1:]), "up": torch.randn(p["up"].shape[0], 2,
                                                                                       *p["up"].shape[2:]),
                      "alpha": torch.tensor(2.0)} for n, p in list(lyco.modules.items())[:2]}
    kohya = LoRA("kohya", kohya_part, {})
    merged = merge.merge_concat([lyco, kohya], [1.0, 0.5])
    for n in want:
        expected = want[n] + (0.5 * kohya.delta(n) if n in kohya.modules else 0)
        assert float((merged.delta(n) - expected).norm() / expected.norm()) < 2e-5, n
    merged.save(str(comfy_dirs / "models" / "loras" / "lycoris_concat.safetensors"))
    load_in_core(model, clip, "lycoris_concat.safetensors", list(merged.modules), caplog)

    # resize to the difference's own rank is lossless; the report names the rank kept
    full = max(p["down"].shape[0] for p in lyco.modules.values())
    resized, report = resize.resize(lyco, new_rank=full)
    assert all(r.fro_retained == pytest.approx(1.0, abs=1e-6) for r in report)
    loha_lin = lyco.modules[pick["lin"]]["down"].shape[0]
    assert loha_lin == 6  # LoHa rank 2 x rank 3: the face-splitting product has rank 6

    with pytest.raises(ValueError, match="weighted merge needs a kohya LoRA file; lycoris_tools is a LyCORIS loha\\+lokr file"):
        merge.merge_weighted([lyco, lyco])


def test_block_weights_scale_loha_and_lokr_and_refuse_dora(sd15):
    model, clip, key_map = sd15
    weights = _weights(model, clip)
    pick = _layers(key_map, weights)
    modules = _modules(pick, key_map, weights)
    tensors = {f"{n}.{part}": v for n, (_, parts) in modules.items() for part, v in parts.items()}
    with pytest.raises(ValueError, match="cannot scale DoRA modules"):
        block_weights.scale_state_dict(tensors, "ALL", "sd15")
    del modules[pick["conv1"]]
    tensors = {f"{n}.{part}": v for n, (_, parts) in modules.items() for part, v in parts.items()}
    vec = [1.0] * 26
    vec[0] = 0.5  # BASE: the text encoder's LoKr at half
    zero = block_weights.block_label(pick["conv3"], "sd15")
    vec[block_weights.LAYOUTS[26].index(zero)] = 0.0  # the Tucker LoHa's block dropped
    scaled = lycoris.group(block_weights.scale_state_dict(tensors, vec, "sd15"), "scaled")
    kept = {n for n in modules if block_weights.block_label(n, "sd15") != zero}
    assert set(scaled) == kept and pick["te"] in kept and len(kept) < len(modules)
    for n in kept:
        shape = weights[key_map[n]].shape
        factor = 0.5 if n.startswith("lora_te") else 1.0
        torch.testing.assert_close(lycoris.difference(scaled[n], shape),
                                   factor * lycoris.difference(modules[n][1], shape), rtol=1e-6, atol=0)
