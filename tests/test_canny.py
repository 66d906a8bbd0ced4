"""Canny: known answers on synthetic images, batching, agreement with OpenCV."""
import cv2
import numpy as np
import pytest
import torch

from lllite_kit.preprocessors.canny import canny


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
    ours = canny(torch.from_numpy(gray).float().div(255).view(1, 1, 96, 128), 50, 100)[0, 0].bool().numpy()
    inner = (slice(2, -2), slice(2, -2))
    agree = (ref[inner] == ours[inner]).mean()
    assert agree > 0.97, agree


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
    ours = canny(torch.from_numpy(img).float().div(255).view(1, 1, 64, 200), 100, 200)[0, 0].bool().numpy()
    assert ref.sum() > 1500 and (ours == ref).mean() > 0.995
