"""Our learned detectors against the reference implementations (controlnet_aux, the library
behind comfyui_controlnet_aux, itself ControlNet 1.1's annotator code): one set of random
weights in the published layout is loaded into both, both run on the same picture, and
the maps must agree.

Tolerances: the reference turns its float map into uint8 by truncation, so a float error
of 1e-6 at a level boundary moves a pixel by one level. Where the maths is the same the
maps therefore agree within 1/255 everywhere (and at almost every pixel exactly). Each
picture is a multiple of 64 px and detected at its own size, so the reference's
resize_image (multiples of 64) is the identity and no resampling filter is compared.
"""
import numpy as np
import pytest
import torch

cna = pytest.importorskip("controlnet_aux")  # test-only dependency: pip install controlnet-aux

from lllite_kit.preprocessors import hed, lineart_realistic, mlsd, pidinet  # noqa: E402

H, W = 64, 128
ONE_LEVEL = 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A uint8 RGB picture with edges and texture: soft colour blobs and a few shapes."""
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.resize(rng.uniform(0, 255, (8, 16, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    cv2.rectangle(img, (10, 8), (50, 40), (250, 240, 20), -1)
    cv2.circle(img, (90, 34), 18, (10, 30, 200), -1)
    cv2.line(img, (0, 60), (127, 45), (255, 255, 255), 2)
    return img


def _ours(picture: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(picture).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def _reference_map(detected: np.ndarray) -> torch.Tensor:
    """The reference's uint8 HWC3 map -> one channel 0..1."""
    return torch.from_numpy(np.ascontiguousarray(detected[..., 0])).float() / 255.0


def _save(module: torch.nn.Module, path, wrap=lambda sd: sd) -> str:
    torch.save(wrap(module.state_dict()), path)
    return str(path)


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.0) -> torch.nn.Module:
    """Default init, optionally nudged so normalisation/scale parameters are not trivial."""
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if scale:
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * scale)
            for name, b in module.named_buffers():
                if name.endswith("running_var"):
                    b.uniform_(0.5, 1.5)
                elif name.endswith("running_mean"):
                    b.normal_(0, 0.1)
    return module.eval()


def _assert_within_one_level(ours: torch.Tensor, ref: torch.Tensor, exact_share: float = 0.99):
    diff = (ours - ref).abs()
    assert ref.std() > 0.01, "the reference map is flat: the comparison would prove nothing"
    assert diff.max() <= ONE_LEVEL, f"max difference {diff.max() * 255:.2f} levels"
    # uint8 truncation: ours floored to the same levels must match at almost every pixel
    same = (torch.floor(ours * 255 + 1e-4) == torch.round(ref * 255)).float().mean()
    assert same >= exact_share, f"only {same:.4f} of the pixels are on the same level"


@pytest.fixture(scope="module")
def hed_pair(tmp_path_factory):
    """controlnet_aux's HED with random weights, and the same weights as ControlNetHED.pth."""
    from controlnet_aux.hed import ControlNetHED_Apache2

    ref = _randomise(ControlNetHED_Apache2(), 0)
    with torch.no_grad():
        ref.norm.copy_(torch.tensor([120.0, 115.0, 105.0]).view(1, 3, 1, 1))
    return ref, _save(ref, tmp_path_factory.mktemp("hed") / "ControlNetHED.pth")


@pytest.fixture(scope="module")
def pidinet_pair(tmp_path_factory):
    """controlnet_aux's PiDiNet, and the same weights as table5_pidinet.pth is saved."""
    from controlnet_aux.pidi.model import pidinet as reference_pidinet

    ref = _randomise(reference_pidinet(), 0, scale=0.5)
    return ref, _save(ref, tmp_path_factory.mktemp("pidinet") / "table5_pidinet.pth",
                      lambda sd: {"epoch": 19, "state_dict": {f"module.{k}": v for k, v in sd.items()}})


@pytest.mark.parametrize("safe", [False, True], ids=["plain", "safe"])
def test_hed_equals_controlnet_aux(hed_pair, picture, safe):
    from controlnet_aux.hed import HEDdetector

    ref, path = hed_pair
    expected = HEDdetector(ref)(picture, detect_resolution=H, image_resolution=H, safe=safe, output_type="np")
    ours = hed.hed_edges(hed.load_hed(path), _ours(picture), detect_resolution=H, safe=safe)
    _assert_within_one_level(ours[0, 0], _reference_map(expected))


@pytest.mark.parametrize("safe", [False, True], ids=["plain", "safe"])
def test_pidinet_equals_controlnet_aux(pidinet_pair, picture, safe):
    from controlnet_aux.pidi import PidiNetDetector

    ref, path = pidinet_pair
    expected = PidiNetDetector(ref)(picture, detect_resolution=H, image_resolution=H, safe=safe, output_type="np")
    ours = pidinet.pidinet_edges(pidinet.load_pidinet(path), _ours(picture), detect_resolution=H, safe=safe)
    _assert_within_one_level(ours[0, 0], _reference_map(expected))


@pytest.mark.parametrize("coarse", [False, True], ids=["sk_model", "sk_model2"])
def test_realistic_lineart_equals_controlnet_aux(tmp_path, picture, coarse):
    from controlnet_aux.lineart import Generator, LineartDetector

    ref = _randomise(Generator(3, 1, 3), int(coarse))
    path = _save(ref, tmp_path / ("sk_model2.pth" if coarse else "sk_model.pth"))
    expected = LineartDetector(ref, ref)(picture, coarse=coarse, detect_resolution=H, image_resolution=H,
                                         output_type="np")
    ours = lineart_realistic.lineart_realistic(lineart_realistic.load_lineart(path), _ours(picture), H)
    # The reference truncates the drawing, then inverts it (255 - x): ours rounds up where it floors.
    _assert_within_one_level(1.0 - ours[0, 0], 1.0 - _reference_map(expected))


@pytest.mark.parametrize("detector", ["hed", "pidinet"])
def test_fake_scribble_equals_controlnet_aux_up_to_opencv_fixed_point(hed_pair, pidinet_pair, picture, detector):
    """The reference's last blur runs on uint8 in OpenCV's fixed-point arithmetic (up to 2
    levels off a float blur) and its ridge search on the truncated map: strokes may move
    at their rims, so at least 98.5% of the pixels must agree, and the stroke areas
    within 2%."""
    if detector == "hed":
        from controlnet_aux.hed import HEDdetector

        ref, path = hed_pair
        expected = HEDdetector(ref)(picture, detect_resolution=H, image_resolution=H, scribble=True, output_type="np")
        ours = hed.hed_edges(hed.load_hed(path), _ours(picture), detect_resolution=H, scribble=True)
    else:
        from controlnet_aux.pidi import PidiNetDetector

        ref, path = pidinet_pair
        expected = PidiNetDetector(ref)(picture, detect_resolution=H, image_resolution=H, scribble=True,
                                        output_type="np")
        ours = pidinet.pidinet_edges(pidinet.load_pidinet(path), _ours(picture), detect_resolution=H, scribble=True)
    ref_map = _reference_map(expected)
    assert 0.05 < ref_map.mean() < 0.95
    assert (ours[0, 0] == ref_map).float().mean() >= 0.985
    assert abs(ours.mean() - ref_map.mean()) < 0.02


@pytest.fixture(scope="module")
def mlsd_pair(tmp_path_factory):
    """Random M-LSD weights whose end-point displacements stay within the picture."""
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    ref = _randomise(MobileV2_MLSD_Large(), 0, scale=0.1)
    with torch.no_grad():
        ref.block23.conv3.weight.mul_(1 / 300)
        ref.block23.conv3.bias.zero_()
    return ref, _save(ref, tmp_path_factory.mktemp("mlsd") / "mlsd_large_512_fp32.pth")


def test_mlsd_network_and_decoding_equal_controlnet_aux(mlsd_pair, picture):
    from controlnet_aux.mlsd.utils import pred_lines

    ref = mlsd_pair[0]
    ours = mlsd.MobileV2_MLSD_Large()
    ours.load_state_dict(ref.state_dict())
    x = _ours(picture)
    with torch.no_grad():
        out = ours.eval().predict(x)
        assert torch.equal(out, ref(torch.cat([x * 255, torch.ones(1, 1, H, W)], 1) / 127.5 - 1.0))
        expected = pred_lines(picture, ref, [H, W], 0.2, 2.0)
    segments, keep = mlsd.decode_segments(out, 0.2, 2.0)
    assert 10 < len(expected) < 200
    torch.testing.assert_close(segments[0][keep[0]], torch.from_numpy(expected).float(), rtol=0, atol=1e-4)


def test_mlsd_map_equals_controlnet_aux(mlsd_pair, picture):
    from controlnet_aux.mlsd import MLSDdetector

    ref, path = mlsd_pair
    for score in (0.1, 0.5):
        expected = MLSDdetector(ref)(picture, thr_v=score, thr_d=2.0, detect_resolution=H, image_resolution=H,
                                     output_type="np")
        ours = mlsd.mlsd_lines(mlsd.load_mlsd(path), _ours(picture), H, score, 2.0)
        assert _reference_map(expected).mean() > 0.02
        assert torch.equal(ours[0, 0], _reference_map(expected)), score


def test_anime_lineart_equals_controlnet_aux(tmp_path):
    """netG.pth's U-Net at a tiny width (the reference class takes the width too), on a
    256 px picture: the reference's own multiple, so its cubic resizes are the identity."""
    import functools

    import cv2
    from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator

    from lllite_kit.preprocessors import lineart_anime

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    ref = _randomise(UnetGenerator(3, 1, 8, 4, norm_layer=norm), 0)
    path = _save(ref, tmp_path / "netG.pth", lambda sd: {f"module.{k}": v for k, v in sd.items()})
    rng = np.random.default_rng(3)
    picture = np.clip(cv2.resize(rng.uniform(0, 255, (16, 16, 3)).astype(np.float32), (256, 256),
                                 interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    expected = LineartAnimeDetector(ref)(picture, detect_resolution=256, image_resolution=256, output_type="np")
    ours = lineart_anime.lineart_anime(lineart_anime.load_lineart_anime(path), _ours(picture), 256)
    _assert_within_one_level(1.0 - ours[0, 0], 1.0 - _reference_map(expected))


def test_anime_lineart_node_reads_netg_and_keeps_the_picture_size(graph, comfy_dirs):
    from PIL import Image

    from lllite_kit.preprocessors import lineart_anime

    torch.manual_seed(0)
    torch.save(lineart_anime.UnetGenerator(width=2).state_dict(), comfy_dirs / "models" / "preprocessors" / "netG.pth")
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(comfy_dirs / "input" / "anime_picture.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "anime_picture.png"}},
              "2": {"class_type": "LLLiteKit_LineartAnime",
                    "inputs": {"image": ["1", 0], "weights": "netG.pth", "detect_resolution": 64}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    graph.run(prompt)
    out = graph.node_outputs("2")[0][0]
    assert out.shape == (1, 40, 56, 3) and 0 <= out.min() and out.max() <= 1


def test_anime_lineart_refuses_other_files(tmp_path):
    from lllite_kit.preprocessors import lineart_anime, weights

    torch.save(lineart_realistic.Generator(width=4, residual_blocks=1).state_dict(), tmp_path / "sk_model.pth")
    with pytest.raises(weights.WrongWeightLayout, match="UnetGenerator"):
        lineart_anime.build_lineart_anime(str(tmp_path / "sk_model.pth"))
