"""Controllability metrics on hand-built maps whose values are known exactly."""
import math

import pytest
import torch

from lllite_kit.training.controllability import metrics
from lllite_kit.training.controllability.maps import KINDS, MapSettings, result_maps
from lllite_kit.training.controllability.measure import measure


def _edges(rows=(), cols=(), h=32, w=32):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for r in rows:
        m[..., r, 4:28] = True
    for c in cols:
        m[..., 4:28, c] = True
    return m


def test_edge_f1_identical_shifted_and_partial():
    guide = _edges(rows=[10], cols=[20])
    assert metrics.edge_f1(guide, guide, 0)["f1"].item() == 1.0
    shifted = torch.roll(guide, 1, dims=-1)  # every edge pixel 1 px to the right
    assert metrics.edge_f1(shifted, guide, 1)["f1"].item() == 1.0
    assert metrics.edge_f1(shifted, guide, 0.9)["f1"].item() < 1.0
    # the vertical line moved by 1 px misses entirely at tolerance 0; the horizontal one keeps 23 of 24
    exact = metrics.edge_f1(shifted, guide, 0)
    n = guide.sum().item()  # 24 + 24 - 1 crossing
    assert exact["precision"].item() == pytest.approx(23 / n)
    far = torch.roll(guide, 3, dims=-1)
    assert metrics.edge_f1(far, guide, 2)["f1"].item() < metrics.edge_f1(far, guide, 3)["f1"].item() == 1.0
    half = _edges(rows=[10])  # the result draws one of the two lines
    s = metrics.edge_f1(half, _edges(rows=[10], cols=[2]), 0)
    assert s["precision"].item() == 1.0
    assert s["recall"].item() == pytest.approx(24 / 48)
    assert s["f1"].item() == pytest.approx(2 * 0.5 / 1.5)


def test_edge_f1_empty_maps():
    empty, line = _edges(), _edges(rows=[5])
    assert metrics.edge_f1(empty, empty)["f1"].item() == 1.0
    assert metrics.edge_f1(empty, line)["f1"].item() == 0.0
    assert metrics.edge_f1(line, empty)["f1"].item() == 0.0


def test_tolerance_is_euclidean():
    guide = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    guide[..., 4, 4] = True
    diag = torch.zeros_like(guide)
    diag[..., 5, 5] = True  # sqrt(2) away
    assert metrics.edge_f1(diag, guide, 1)["f1"].item() == 0.0
    assert metrics.edge_f1(diag, guide, 1.5)["f1"].item() == 1.0


def test_ssim():
    g = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(metrics.ssim(g, g), torch.ones(2))
    assert metrics.ssim(1 - g, g).max().item() < 0


def test_depth_scale_and_shift_invariance():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 16, 32)
    d = metrics.depth_errors(0.3 * ramp + 0.2, ramp)
    assert d["rmse"].item() == pytest.approx(0.0, abs=1e-6)
    assert d["correlation"].item() == pytest.approx(1.0, abs=1e-6)
    assert metrics.depth_errors(1 - ramp, ramp)["correlation"].item() == pytest.approx(-1.0, abs=1e-6)
    flat = metrics.depth_errors(torch.full_like(ramp, 0.5), ramp)  # no structure: the best fit is the mean
    assert flat["rmse"].item() == pytest.approx(ramp.std(unbiased=False).item(), abs=1e-6)
    assert flat["correlation"].item() == 0.0
    # a known residual: result = ramp + a +-e checkerboard orthogonal to the ramp
    e = 0.05
    checker = ((torch.arange(16).view(16, 1) + torch.arange(32).view(1, 32)) % 2 * 2 - 1).float().view(1, 1, 16, 32) * e
    r = metrics.depth_errors(ramp, ramp + checker)
    assert r["rmse"].item() == pytest.approx(e, rel=1e-3)


def test_normal_angles():
    viewer = torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    right = torch.tensor([1.0, 0.5, 0.5]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert metrics.normal_errors(viewer, viewer)["angle_deg"].item() == pytest.approx(0.0, abs=1e-2)
    n = metrics.normal_errors(right, viewer)
    assert n["angle_deg"].item() == pytest.approx(90.0, abs=1e-3)
    assert n["within_11_25"].item() == 0.0
    tilt = torch.tensor([0.5 + 0.5 * math.sin(math.radians(30)), 0.5, 0.5 + 0.5 * math.cos(math.radians(30))])
    tilted = tilt.view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert metrics.normal_errors(tilted, viewer)["angle_deg"].item() == pytest.approx(30.0, abs=1e-3)


def test_pck():
    guide = torch.tensor([[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]]])
    result = guide + torch.tensor([[[0.0, 3.0], [4.0, 0.0], [10.0, 0.0], [0.0, 0.0]]])
    visible = torch.tensor([[True, True, True, False]])
    # alpha 0.05 of 100 px = 5 px: keypoints 0 and 1 are within it, 2 is not, 3 is not visible in the guide
    assert metrics.pck(result, guide, torch.ones(1, 4, dtype=torch.bool), visible, 100, 0.05).item() == pytest.approx(2 / 3)
    hidden = torch.tensor([[False, True, True, True]])  # the result does not show keypoint 0
    assert metrics.pck(result, guide, hidden, visible, 100, 0.05).item() == pytest.approx(1 / 3)


def test_mean_iou_and_colour_labels():
    guide = torch.zeros(1, 3, 4, 8)
    guide[:, 0, :, 4:] = 1.0  # left black, right red
    result = torch.zeros(1, 3, 4, 8)  # all black
    g, r = metrics.labels_from_colours(guide), metrics.labels_from_colours(result)
    assert metrics.mean_iou(g, g).item() == 1.0
    assert metrics.mean_iou(r, g).item() == pytest.approx((0.5 + 0.0) / 2)


def test_measure_per_image_mean_and_side_by_side():
    guide = _edges(rows=[10], cols=[20]).float().expand(1, 3, 32, 32)
    results = torch.cat([guide, torch.zeros_like(guide)])
    m = measure("edges", results, guide, tolerance=1)
    assert [d["f1"] for d in m.per_image] == [1.0, 0.0]
    assert m.mean["f1"] == 0.5 and m.primary == "f1" and m.higher_is_better
    assert m.side_by_side.shape == (2, 3, 32, 96)
    assert m.side_by_side[0, :, :, 64:].max() == 0  # no difference for the identical map
    assert m.side_by_side[1, 0, 10, 64 + 10] == 1  # the missed edge shows in the difference
    with pytest.raises(ValueError, match="guide images"):
        measure("edges", results, torch.cat([guide] * 3))


def test_chance_level_scores_each_picture_against_the_other_guides():
    """A picture that follows its own guide scores 1; the chance level is the same pictures
    against the other pictures' guides (never their own), so control shows as the gap."""
    guides = torch.cat([_edges(rows=[r], cols=[c]).float().expand(1, 3, 32, 32) for r, c in ((4, 6), (12, 20), (26, 28))])
    m = measure("edges", guides, guides, tolerance=1)
    others = [measure("edges", guides, guides.roll(k, 0), tolerance=1).mean["f1"] for k in (1, 2)]
    assert m.mean["f1"] == 1.0 and m.chance == pytest.approx(sum(others) / 2) and m.chance < 0.5
    assert f"chance (each picture against the other pictures' guides): f1 {m.chance:.4f}" in m.text()
    same = measure("edges", guides, guides[:1], tolerance=1)  # one guide for every picture: no other guides
    assert same.chance is None and "chance" not in same.text()
    depth = measure("depth", guides, guides)
    assert depth.mean["rmse"] < depth.chance  # lower is better: following the guide beats chance


def test_canny_map_of_the_guide_picture_scores_perfectly():
    """The pipeline end to end on a picture: a guide made by Canny from a picture, and that
    picture measured against it, is F1 1; a blank picture scores 0."""
    pic = torch.zeros(1, 3, 48, 48)
    pic[..., 12:36, 12:36] = 1.0
    s = MapSettings(low_threshold=100, high_threshold=200)
    guide = result_maps("canny", pic, s)
    assert guide.sum() > 0
    assert measure(KINDS["canny"].family, result_maps("canny", pic, s), guide).mean["f1"] == 1.0
    assert measure("edges", result_maps("canny", torch.zeros_like(pic), s), guide).mean["f1"] == 0.0
    with pytest.raises(ValueError, match="weight file"):
        result_maps("hed", pic, s)


def test_measure_segmentation_maps():
    guide = torch.zeros(1, 3, 4, 8)
    guide[:, 0, :, 4:] = 1.0
    m = measure("segmentation", torch.zeros(1, 3, 8, 16), guide)  # resized by nearest neighbour: colours kept
    assert m.mean["miou"] == pytest.approx(0.25) and m.mean["pixel_accuracy"] == pytest.approx(0.5)
    assert m.primary == "miou" and m.side_by_side.shape == (1, 3, 4, 24)


def test_training_check_chance_level_equals_the_nodes_with_many_heldout_guides():
    """The training check's chance level is the node's: each picture against up to
    CHANCE_GUIDES other guides (rolled by 1, 2, ...), also when more are held out."""
    from types import SimpleNamespace

    from lllite_kit.training.controllability.check import CheckOptions, ControllabilityCheck
    from lllite_kit.training.controllability.measure import CHANCE_GUIDES

    n = CHANCE_GUIDES + 3  # more held-out guides than the node compares with
    g = torch.Generator().manual_seed(0)
    guides = torch.cat([_edges(rows=[int(torch.randint(4, 28, (1,), generator=g))],
                               cols=[int(torch.randint(4, 28, (1,), generator=g))]).float() for _ in range(n)])
    pictures = [(guides[i:i + 1] > 0).float().expand(1, 3, 32, 32).clone() for i in range(n)]
    pictures = [p.roll(i % 3, dims=-1) for i, p in enumerate(pictures)]  # each follows its guide, some 1-2 px off
    holdout = SimpleNamespace(latents=torch.zeros(n, 4, 4, 4), guides=guides.expand(n, 3, 32, 32) * 2 - 1, captions=[""] * n)
    options = CheckOptions(kind="canny", images=n, settings=MapSettings())
    check = ControllabilityCheck(None, None, None, [holdout], options, decode=None)
    check.pictures = lambda: pictures
    score = check(0)
    m = measure("edges", result_maps("canny", torch.cat(pictures), MapSettings()), guides.expand(n, 3, 32, 32),
                options.tolerance, options.edge_threshold)
    assert score["controllability"] == pytest.approx(m.mean["f1"], abs=1e-6)
    assert score["controllability_chance"] == pytest.approx(m.chance, abs=1e-6)
    assert m.chance < m.mean["f1"]
