"""Canny: known answers on synthetic images, batching, and the same map as cv2.Canny on the
uint8 RGB picture (the call A1111 and controlnet_aux make) from both paths: OpenCV on CPU,
the torch implementation elsewhere (run here on CPU to compare)."""
import cv2
import numpy as np
import pytest
import torch

from lllite_kit.preprocessors.canny import canny, canny_torch, to_uint8_rgb


def _rectangle(h=64, w=80, top=16, left=20, bottom=48, right=60):
    img = torch.zeros(1, 3, h, w)
    img[:, :, top:bottom, left:right] = 1.0
    return img


def test_rectangle_edges_on_its_border_only():
    edges = canny(_rectangle())[0, 0]
    ys, xs = torch.nonzero(edges, as_tuple=True)
    assert len(ys) > 0
    # every edge pixel is within one pixel of the rectangle's outline
    near_vertical = ((xs - 20).abs() <= 1) | ((xs - 59).abs() <= 1)
    near_horizontal = ((ys - 16).abs() <= 1) | ((ys - 47).abs() <= 1)
    assert bool((near_vertical | near_horizontal).all())
    # and the outline is closed: each side has edges along its whole length
    assert edges[20:44, 18:23].sum(dim=1).min() >= 1
    assert edges[20:44, 57:62].sum(dim=1).min() >= 1
    # flat regions are empty
    assert edges[24:40, 28:52].sum() == 0 and edges[:10].sum() == 0


def test_thresholds_on_opencv_scale():
    faint = _rectangle() * (10 / 255)  # a step of 10 grey levels: |gx|+|gy| = 40 at most
    assert canny(faint, 20, 30).sum() > 0
    assert canny(faint, 100, 200).sum() == 0


def test_matches_opencv_on_a_natural_like_image():
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (96, 128)).astype(np.float32), (0, 0), 3)
    gray = np.clip((base - base.min()) / (base.max() - base.min()) * 255, 0, 255).astype(np.uint8)
    ref = cv2.Canny(gray, 50, 100) > 0
    x = torch.from_numpy(gray).float().div(255).view(1, 1, 96, 128)
    assert ref.sum() > 300
    assert np.array_equal(canny(x, 50, 100)[0, 0].bool().numpy(), ref)
    assert np.array_equal(canny_torch(to_uint8_rgb(x), 50, 100, False)[0, 0].bool().numpy(), ref)


def test_batch_is_processed_per_image():
    a, b = _rectangle(), torch.zeros(1, 3, 64, 80)
    out = canny(torch.cat([a, b, a]))
    assert out.shape == (3, 1, 64, 80)
    assert torch.equal(out[0], out[2]) and out[1].sum() == 0 and out[0].sum() > 0


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_and_rgba_inputs(channels):
    img = _rectangle()[:, :1].expand(-1, channels, -1, -1).clone()
    assert torch.equal(canny(img), canny(_rectangle()))


def test_hysteresis_keeps_exactly_the_components_that_touch_a_strong_pixel():
    from lllite_kit.preprocessors.canny import _hysteresis

    rng = np.random.default_rng(3)
    weak = rng.random((2, 48, 70)) < 0.45       # dense enough for long, winding components
    strong = weak & (rng.random(weak.shape) < 0.01)
    pos = torch.from_numpy(weak.reshape(-1)).nonzero().squeeze(1)
    kept = torch.zeros(weak.size, dtype=torch.bool)
    kept[pos[_hysteresis(pos, torch.from_numpy(strong.reshape(-1))[pos], 48, 70)]] = True
    for i in range(2):  # reference: OpenCV's 8-connected components, per image
        _, labels = cv2.connectedComponents(weak[i].astype(np.uint8), connectivity=8)
        expected = np.isin(labels, labels[strong[i]]) & weak[i]
        assert np.array_equal(kept.view(2, 48, 70)[i].numpy(), expected)


def test_a_long_winding_edge_is_kept_from_one_strong_end():
    img = np.zeros((64, 200), np.uint8)
    for r in range(4, 60, 8):  # a serpentine faint ridge (gradient ~ 4x40 = 160 > 100, < 200)
        cv2.line(img, (4, r), (195, r), 40, 1)
        cv2.line(img, (195 if (r // 8) % 2 == 0 else 4, r), (195 if (r // 8) % 2 == 0 else 4, r + 8), 40, 1)
    cv2.line(img, (4, 4), (20, 4), 255, 1)  # one strong stretch at the start
    ref = cv2.Canny(img, 100, 200) > 0
    x = torch.from_numpy(img).float().div(255).view(1, 1, 64, 200)
    ours = canny_torch(to_uint8_rgb(x), 100, 200, False)[0, 0].bool().numpy()
    assert ref.sum() > 1500 and np.array_equal(ours, ref)


def _colour_pictures(n=3, h=67, w=91):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.0 + i)
        out.append(np.clip((base - base.min()) / (base.max() - base.min()) * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("l2", [False, True], ids=["L1", "L2"])
@pytest.mark.parametrize("low,high", [(100, 200), (30, 60), (90, 40)])
def test_both_paths_equal_opencv_on_colour_pictures(low, high, l2):
    """Colour matters: OpenCV takes, per pixel, the channel with the largest gradient."""
    pictures = _colour_pictures()
    expected = np.stack([cv2.Canny(p, low, high, L2gradient=l2) > 0 for p in pictures])
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255.0
    assert expected.sum() > 500
    assert np.array_equal(canny(x, low, high, l2)[:, 0].bool().numpy(), expected)
    assert np.array_equal(canny_torch(to_uint8_rgb(x), low, high, l2)[:, 0].bool().numpy(), expected)
    grey = np.stack([cv2.Canny(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), low, high, L2gradient=l2) > 0 for p in pictures])
    assert not np.array_equal(grey, expected)  # the pictures tell colour Canny from grey Canny


def test_pictures_read_from_8_bit_files_are_not_shifted_by_a_level():
    level = torch.full((1, 3, 8, 8), 0.0)
    level[..., 4:] = 201 / 255
    assert torch.equal(to_uint8_rgb(level)[0, 0, 0], torch.tensor([0, 0, 0, 0, 201, 201, 201, 201], dtype=torch.uint8))


def test_negative_thresholds_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        canny(_rectangle(), -1, 10)
