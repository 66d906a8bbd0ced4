"""Classical guide maps (no weights): known answers on synthetic pictures, agreement with
the OpenCV recipes users know, output size, odd and tiny images."""
import cv2
import numpy as np
import pytest
import torch

from lllite_kit.preprocessors.blur_tile import blur_guide, tile_guide
from lllite_kit.preprocessors.canny import canny
from lllite_kit.preprocessors.image_ops import invert
from lllite_kit.preprocessors.lineart_standard import lineart_standard
from lllite_kit.preprocessors.normal_map import normals_from_depth
from lllite_kit.preprocessors.resolution import detect_size, detect_then_restore
from lllite_kit.preprocessors.scribble import scribble_xdog
from lllite_kit.preprocessors.soft_edges import fake_scribble, safe_step, thin_ridges
from lllite_kit.preprocessors.threshold import binary_threshold, otsu_levels


def _outline(h=64, w=80, line=2):
    """Black rectangle outline (rows 16..47, cols 20..59) on white, as a drawing would be."""
    img = np.full((h, w), 255, np.uint8)
    cv2.rectangle(img, (20, 16), (59, 47), 0, line)
    return img


def _t(gray_u8):
    return torch.from_numpy(gray_u8).float().div(255).view(1, 1, *gray_u8.shape).expand(-1, 3, -1, -1).contiguous()


def test_lineart_standard_finds_drawn_lines_and_matches_the_opencv_recipe():
    img = _outline()
    ours = lineart_standard(_t(img))[0, 0].numpy()
    assert ours.shape == img.shape
    on_line = img == 0
    assert ours[on_line].mean() > 0.4 and ours[~on_line].mean() < 0.05
    assert ours[30:34, 30:50].max() == 0  # flat paper inside the rectangle
    # the recipe of the "standard lineart" preprocessor, in OpenCV
    x = np.repeat(img[..., None], 3, -1).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > 8]))
    ref = (intensity * 127).clip(0, 255) / 255
    assert np.abs(ref - ours).mean() < 0.01


def test_scribble_xdog_strokes_follow_dark_lines_and_match_the_opencv_recipe():
    img = _outline()
    ours = scribble_xdog(_t(img), threshold=32)[0, 0].numpy()
    assert set(np.unique(ours)) <= {0.0, 1.0}
    assert ours[img == 0].mean() > 0.95
    assert ours[28:36, 30:50].sum() == 0 and ours[:8].sum() == 0
    x = np.repeat(img[..., None], 3, -1).astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)).clip(0, 255)
    ref = (2 * (255 - dog.astype(np.uint8).astype(np.float32)) > 32).astype(np.float32)
    assert (ref == ours).mean() > 0.98


def test_binary_threshold_fixed_and_otsu_agree_with_opencv():
    rng = np.random.default_rng(0)
    img = np.where(rng.random((48, 64)) < 0.4, 60, 190).astype(np.uint8)
    img = np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)
    t = _t(img)
    fixed = binary_threshold(t, 128)[0, 0].numpy()
    assert np.array_equal(fixed, (img > 128).astype(np.float32))
    level, ref = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert float(otsu_levels(t[:, :1] * 255)[0]) == level
    assert np.array_equal(binary_threshold(t, 0)[0, 0].numpy(), ref / 255)


def test_otsu_is_per_image_in_a_batch():
    dark = torch.full((1, 3, 8, 8), 0.1)
    dark[..., :4] = 0.3
    bright = torch.full((1, 3, 8, 8), 0.7)
    bright[..., :4] = 0.9
    out = binary_threshold(torch.cat([dark, bright]), 0)
    assert torch.equal(out[0, 0, :, :4], torch.ones(8, 4)) and out[0, 0, :, 4:].sum() == 0
    assert torch.equal(out[1, 0, :, :4], torch.ones(8, 4)) and out[1, 0, :, 4:].sum() == 0


def test_invert_negates_colour_and_drops_alpha():
    rgba = torch.rand(2, 4, 5, 7)
    out = invert(rgba)
    assert out.shape == (2, 3, 5, 7) and torch.allclose(out, 1 - rgba[:, :3])
    assert torch.equal(invert(invert(rgba)), rgba[:, :3])


def test_tile_and_blur_remove_detail_but_keep_size_and_colour():
    checker = (torch.arange(33).view(-1, 1) + torch.arange(47).view(1, -1)) % 2
    img = checker.float().expand(1, 3, -1, -1)
    tiled = tile_guide(img, 3)
    assert tiled.shape == (1, 3, 33, 47)
    assert (tiled[..., 8:-8, 8:-8] - 0.5).abs().max() < 0.1
    assert torch.equal(tile_guide(img, 0), img)
    flat = torch.full((1, 3, 20, 30), 0.3)
    assert torch.allclose(tile_guide(flat, 2), flat, atol=1e-6) and torch.allclose(blur_guide(flat, 4.0), flat, atol=1e-6)
    assert (blur_guide(img, 2.0)[..., 6:-6, 6:-6] - 0.5).abs().max() < 0.02
    assert torch.equal(blur_guide(img, 0.0), img)


def test_normals_of_a_plane_ramp_are_constant_and_point_the_right_way():
    h, w = 40, 64
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 1, h, w)  # nearer to the right
    n = normals_from_depth(ramp, strength=1.0, background_threshold=0.0)[0]
    inner = n[:, 2:-2, 2:-2]
    assert torch.allclose(inner, inner[:, :1, :1].expand_as(inner), atol=1e-4)
    r, g, b = inner[:, 0, 0]
    slope = w / (w - 1)  # depth range per image width
    expected = torch.tensor([-slope, 0.0, 1.0]) / (slope ** 2 + 1) ** 0.5 * 0.5 + 0.5
    assert torch.allclose(inner[:, 0, 0], expected, atol=1e-4)
    assert r < 0.5 and abs(g - 0.5) < 1e-5 and b > 0.5  # faces left: its right side is nearer
    down = ramp.transpose(-1, -2)[..., :w, :h]  # nearer towards the bottom: faces up
    assert normals_from_depth(down, 1.0, 0.0)[0, 1, 5:-5, 5:-5].min() > 0.5


def test_normals_flat_depth_strength_zero_and_background():
    flat = torch.full((1, 3, 16, 16), 0.5)
    view = torch.tensor([0.5, 0.5, 1.0]).view(3, 1, 1)
    assert torch.allclose(normals_from_depth(flat)[0], view.expand(3, 16, 16))
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    assert torch.allclose(normals_from_depth(ramp, strength=0.0)[0], view.expand(3, 16, 16))
    far = normals_from_depth(ramp, strength=1.0, background_threshold=0.5)[0]
    assert torch.allclose(far[:, :, :7], view.expand(3, 16, 7)) and far[0, :, 9:14].max() < 0.5


@pytest.mark.parametrize("h,w,res,multiple,expected", [
    (683, 1024, 0, 1, (683, 1024)), (683, 1024, 512, 1, (512, 768)), (683, 1024, 512, 32, (512, 768)),
    (45, 67, 518, 14, (518, 770)), (3, 5, 0, 32, (32, 32)), (1, 1, 64, 14, (70, 70)),
])
def test_detect_size(h, w, res, multiple, expected):
    assert detect_size(h, w, res, multiple) == expected


def test_detection_resolution_never_changes_the_output_size():
    img = torch.rand(2, 3, 45, 67)
    for res in (0, 16, 64, 300):
        out = detect_then_restore(lambda x: canny(x), img, res, binary=True)
        assert out.shape == (2, 1, 45, 67) and set(out.unique().tolist()) <= {0.0, 1.0}
    seen = []
    detect_then_restore(lambda x: seen.append(x.shape) or x[:, :1], img, 32, multiple=14)
    assert seen == [(2, 3, 28, 42)]  # short side 32 rounded to a multiple of 14, aspect kept


@pytest.mark.parametrize("fn", [canny, lineart_standard, scribble_xdog, lambda x: binary_threshold(x, 0),
                                lambda x: tile_guide(x, 3), lambda x: blur_guide(x, 3.0), normals_from_depth],
                         ids=["canny", "lineart", "scribble", "binary", "tile", "blur", "normals"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 4, 2, 3), (3, 2, 7, 5)], ids=["1x1", "rgba-2x3", "grey-alpha"])
def test_tiny_grey_and_rgba_images_work(fn, shape):
    out = fn(torch.rand(*shape))
    assert out.shape[0] == shape[0] and out.shape[-2:] == shape[-2:]
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_safe_step_and_fake_scribble():
    levels = safe_step(torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    assert levels.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    yy, xx = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    spot = torch.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 32).view(1, 1, 41, 41)
    ridge = thin_ridges(spot, 0.3, 0.5)[0, 0]
    # a pixel survives where it is the maximum along one of the four directions: the
    # horizontal, vertical and diagonal lines through the peak, as far as the level allows
    assert ridge[20, 16:25].eq(1).all() and ridge[16:25, 20].eq(1).all() and ridge[23, 23] == 1 and ridge[17, 23] == 1
    assert ridge[23, 21] == 0 and ridge[20, :10].sum() == 0
    strokes = fake_scribble(spot)[0, 0]
    assert strokes[20, 14:27].eq(1).all() and strokes[:4].sum() == 0 and set(strokes.unique().tolist()) <= {0.0, 1.0}


def _photo(n=2, h=72, w=88):
    """Smooth colour fields with a few hard-edged shapes: both edges and gradients."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        img = cv2.resize(rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(5):
            x, y = (int(v) for v in rng.integers(8, min(h, w) - 8, 2))
            cv2.circle(img, (x, y), int(rng.integers(4, 16)), rng.uniform(0, 255, 3).tolist(), -1)
        out.append(np.clip(img, 0, 255).round().astype(np.uint8))
    return torch.from_numpy(np.stack(out)).movedim(-1, 1).float() / 255


@pytest.fixture
def torch_path(monkeypatch):
    """Run the classical maps the way they run on a GPU (torch), here on the CPU."""
    from lllite_kit.preprocessors import image_ops
    monkeypatch.setattr(image_ops, "use_opencv", lambda x: False)


def _both_paths(fn, request):
    on_cpu = fn()
    request.getfixturevalue("torch_path")
    return on_cpu, fn()


# OpenCV's float filter and torch's convolution add the same 2r+1 products in another
# order: float32 rounding, ~1e-5 of a grey level. Thresholded maps may flip a pixel whose
# value sits exactly on the threshold (or whose luma rounds the other way to 8 bits), so
# those are compared by the fraction that agree.
@pytest.mark.parametrize("name", ["lineart", "blur", "xdog", "threshold-otsu", "threshold-100"])
def test_opencv_cpu_path_equals_the_torch_gpu_path(name, request):
    img = _photo()
    fn = {"lineart": lambda: lineart_standard(img), "blur": lambda: blur_guide(img, 5.0),
          "xdog": lambda: scribble_xdog(img, 32), "threshold-otsu": lambda: binary_threshold(img, 0),
          "threshold-100": lambda: binary_threshold(img, 100)}[name]
    opencv, torch_map = _both_paths(fn, request)
    assert opencv.shape == torch_map.shape
    if name in ("lineart", "blur"):
        assert (opencv - torch_map).abs().max() < 1e-5
    else:
        assert (opencv == torch_map).float().mean() > 0.999


def test_lineart_standard_equals_controlnet_aux_recipe_on_a_photo():
    """Same recipe as controlnet_aux's LineartStandardDetector (float blur to 4 sigma,
    numpy's median), compared before its uint8 cast: float error only."""
    img = _photo(1)
    x = (img[0].movedim(0, -1).numpy() * 255).astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > 8]))
    ref = (intensity * 127).clip(0, 255) / 255
    assert np.abs(lineart_standard(img)[0, 0].numpy() - ref).max() < 1e-5
