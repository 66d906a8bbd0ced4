"""Learned preprocessors as a library: the public state-dict layouts, loading tiny
random-weight files written in those layouts, shapes, ranges, determinism, caching, and
the errors for missing files and wrong layouts."""
import os

import pytest
import torch

import tiny_preprocessors as tp
from lllite_kit.preprocessors import depth_anything as da
from lllite_kit.preprocessors import hed, lineart_realistic, midas, mlsd, pidinet
from lllite_kit.preprocessors import weights as w

DETECT = 64  # tiny detection size keeps these tests fast on CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("preprocessors")
    tp.write_all(d)
    tp.write_depth_anything_folder(d / "Depth-Anything-V2-Small-hf")
    return d


def _layout(module: torch.nn.Module) -> tuple[int, int]:
    sd = module.state_dict()
    return len(sd), sum(v.numel() for v in sd.values())


def test_hed_has_the_controlnet_hed_layout():
    net = hed.ControlNetHED_Apache2()
    expected = {"norm"} | {f"block{b}.projection.{p}" for b in range(1, 6) for p in ("weight", "bias")} | {
        f"block{b}.convs.{i}.{p}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(n) for p in ("weight", "bias")}
    assert set(net.state_dict()) == expected
    assert net.norm.shape == (1, 3, 1, 1) and net.block5.convs[2].weight.shape == (512, 512, 3, 3)
    assert _layout(net)[1] * 2 == pytest.approx(29.4e6, rel=0.01)  # ControlNetHED.pth: 29.4 MB of fp16


def test_pidinet_has_the_table5_layout():
    net = pidinet.PiDiNet()
    blocks = {1: 3, 2: 4, 3: 4, 4: 4}
    expected = {"init_block.weight", "classifier.weight", "classifier.bias"}
    for s, n in blocks.items():
        for b in range(1, n + 1):
            expected |= {f"block{s}_{b}.conv1.weight", f"block{s}_{b}.conv2.weight"}
            if s > 1 and b == 1:
                expected |= {f"block{s}_{b}.shortcut.weight", f"block{s}_{b}.shortcut.bias"}
    for i in range(4):
        expected |= {f"dilations.{i}.conv1.weight", f"dilations.{i}.conv1.bias", f"attentions.{i}.conv1.weight",
                     f"attentions.{i}.conv1.bias", f"attentions.{i}.conv2.weight", f"conv_reduces.{i}.conv.weight",
                     f"conv_reduces.{i}.conv.bias"} | {f"dilations.{i}.conv2_{j}.weight" for j in range(1, 5)}
    assert set(net.state_dict()) == expected
    assert net.init_block.weight.shape == (60, 3, 3, 3) and net.block3_1.shortcut.weight.shape == (240, 120, 1, 1)
    assert net.dilations[3].conv1.weight.shape == (24, 240, 1, 1)
    assert _layout(net)[1] * 4 == pytest.approx(2.9e6, rel=0.03)  # table5_pidinet.pth: 2.9 MB fp32


def test_mlsd_and_lineart_have_the_public_layouts():
    net = mlsd.MobileV2_MLSD_Large()
    sd = net.state_dict()
    assert sd["backbone.features.0.0.weight"].shape == (32, 4, 3, 3)
    assert sd["backbone.features.13.conv.2.weight"].shape == (96, 576, 1, 1)
    assert sd["block15.conv1.0.weight"].shape == (64, 96, 1, 1) and sd["block23.conv3.weight"].shape == (16, 64, 1, 1)
    assert "block22.conv2.1.running_var" in sd and not any("max_pool" in k for k in sd)
    assert _layout(net) == (362, 1552681)  # 6.2 MB fp32, mlsd_large_512_fp32.pth
    gen = lineart_realistic.Generator()
    sd = gen.state_dict()
    assert sd["model0.1.weight"].shape == (64, 3, 7, 7) and sd["model3.0.weight"].shape == (256, 128, 3, 3)
    assert sd["model2.2.conv_block.5.weight"].shape == (256, 256, 3, 3) and sd["model4.1.weight"].shape == (1, 64, 7, 7)
    assert _layout(gen)[1] * 4 == pytest.approx(17.2e6, rel=0.01)  # sk_model.pth: 17.2 MB fp32


def test_pixel_difference_convolutions_ignore_flat_regions():
    flat = torch.full((1, 2, 9, 9), 0.7)
    for op in ("cd", "ad", "rd"):
        conv = pidinet.PixelDifferenceConv(op, 2, 2, groups=2)
        assert conv(flat)[..., 2:-2, 2:-2].abs().max() < 1e-5, op  # they see differences only
    assert pidinet.PixelDifferenceConv("cv", 2, 2, groups=2)(flat).abs().max() > 0.01


@pytest.mark.parametrize("name,load,run", [
    ("ControlNetHED.pth", hed.load_hed, lambda p, x: hed.hed_edges(p, x, DETECT)),
    ("table5_pidinet.pth", pidinet.load_pidinet, lambda p, x: pidinet.pidinet_edges(p, x, DETECT)),
    ("mlsd_large_512_fp32.pth", mlsd.load_mlsd, lambda p, x: mlsd.mlsd_lines(p, x, DETECT, 0.0, 0.0)),
    ("sk_model.pth", lineart_realistic.load_lineart, lambda p, x: lineart_realistic.lineart_realistic(p, x, DETECT)),
    ("depth_anything_v2_vits.pth", da.load_depth_anything, lambda p, x: da.depth_anything(p, x, 56)),
    ("Depth-Anything-V2-Small-hf", da.load_depth_anything, lambda p, x: da.depth_anything(p, x, 56)),
    ("dpt-hybrid-midas", midas.load_midas, midas.midas_depth),
], ids=["hed", "pidinet", "mlsd", "lineart", "depth-anything-pth", "depth-anything-folder", "midas"])
def test_learned_map_shapes_ranges_batching_and_determinism(files, name, load, run):
    torch.manual_seed(1)
    images = torch.rand(5, 4, 37, 51)  # RGBA, odd size, more images than one chunk
    patcher = load(str(files / name))
    out = run(patcher, images)
    assert out.shape == (5, 1, 37, 51) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(run(patcher, images), out)  # deterministic
    assert torch.allclose(run(patcher, images[3:4]), out[3:4], atol=1e-5)  # batching does not mix images
    if "mlsd" not in name:
        assert out.std() > 0  # a real map, not a constant
    for tiny in (torch.rand(1, 1, 1, 1), torch.rand(2, 2, 3, 2)):  # 1x1 grey, 3x2 grey+alpha: still a map
        small = run(patcher, tiny)
        assert small.shape == (tiny.shape[0], 1, *tiny.shape[-2:]) and torch.isfinite(small).all()


def test_original_depth_anything_file_predicts_exactly_like_the_transformers_model(files):
    reference = tp.tiny_depth_anything(0)
    loaded = da.load_depth_anything(str(files / "depth_anything_v2_vits.pth")).model.net
    assert loaded.config.backbone_config.out_indices == [1, 2, 3, 4]
    x = torch.rand(2, 3, 56, 70)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).predicted_depth, reference(pixel_values=x).predicted_depth)


def test_mlsd_decodes_a_centre_and_its_displacements_into_a_segment():
    out = torch.full((1, 9, 16, 16), -10.0)
    out[0, 0, 5, 8] = 5.0                                         # a confident centre at x=8, y=5
    out[0, 1:5, 5, 8] = torch.tensor([-4.0, 0.0, 4.0, 0.0])        # ends 4 cells left and right
    segments, keep = mlsd.decode_segments(out, score_threshold=0.5, distance_threshold=1.0)
    assert keep.sum() == 1
    assert segments[keep].tolist() == [[8.0, 10.0, 24.0, 10.0]]     # twice the grid: input pixels
    canvas = mlsd.draw_segments(segments, keep, 32, 32)[0, 0]
    assert canvas[10, 8:25].eq(1).all() and canvas.sum() == 17


def test_models_stay_loaded_until_the_file_changes(files, tmp_path):
    path = tmp_path / "sk_model.pth"
    tp.write_lineart(path)
    first = lineart_realistic.load_lineart(str(path))
    assert lineart_realistic.load_lineart(str(path)) is first
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert lineart_realistic.load_lineart(str(path)) is not first
    import comfy.model_patcher

    assert isinstance(first, comfy.model_patcher.ModelPatcher) and not first.model.training


def test_missing_file_names_the_file_the_folder_and_the_url(tmp_path):
    with pytest.raises(w.WeightFileMissing) as e:
        w.locate("ControlNetHED.pth", [str(tmp_path)])
    msg = str(e.value)
    assert "ControlNetHED.pth" in msg and str(tmp_path) in msg and w.HED.url in msg
    with pytest.raises(w.WeightFileMissing, match="huggingface.co/Intel/dpt-hybrid-midas.*whole folder"):
        w.locate("dpt-hybrid-midas", [str(tmp_path)])
    with pytest.raises(w.WeightFileMissing, match="not a name inside"):
        w.locate("../secrets.pth", [str(tmp_path)])


@pytest.mark.parametrize("name,build,expected", [
    ("table5_pidinet.pth", hed.build_hed, "ControlNetHED_Apache2"),
    ("ControlNetHED.pth", pidinet.build_pidinet, "PiDiNet"),
    ("sk_model.pth", mlsd.build_mlsd, "MobileV2_MLSD_Large"),
    ("ControlNetHED.pth", lineart_realistic.build_lineart, "informative-drawings Generator"),
    ("mlsd_large_512_fp32.pth", da.build_depth_anything, "Depth Anything V2"),
    ("Depth-Anything-V2-Small-hf", midas.build_midas, "MiDaS DPT-Hybrid"),
    ("sk_model.pth", midas.build_midas, "MiDaS DPT-Hybrid"),
    ("dpt-hybrid-midas", hed.build_hed, "ControlNetHED_Apache2"),
])
def test_wrong_layout_names_the_architecture_expected(files, name, build, expected):
    with pytest.raises(w.WrongWeightLayout, match=expected):
        build(str(files / name))


def test_same_names_but_other_shapes_is_a_wrong_layout(tmp_path):
    sd = hed.ControlNetHED_Apache2(widths=(4, 8, 8, 8, 8)).state_dict()
    sd["block2.convs.0.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(sd, tmp_path / "ControlNetHED.pth")
    with pytest.raises(w.WrongWeightLayout, match="does not match ControlNetHED_Apache2"):
        hed.build_hed(str(tmp_path / "ControlNetHED.pth"))


def test_choices_list_public_names_first_then_other_files(files):
    names = w.weight_choices([w.HED], [str(files)])
    assert names[0] == "ControlNetHED.pth"
    assert "table5_pidinet.pth" not in names  # another node's public file
    (files / "my_hed_finetune.safetensors").write_bytes(b"")
    try:
        names = w.weight_choices([w.HED], [str(files)])
        assert "my_hed_finetune.safetensors" in names
        assert "Depth-Anything-V2-Small-hf" not in names and not any(n.endswith("config.json") for n in names)
        assert "Depth-Anything-V2-Small-hf" in w.available_weights([str(files)])
    finally:
        (files / "my_hed_finetune.safetensors").unlink()
