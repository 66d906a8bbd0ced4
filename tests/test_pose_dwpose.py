"""DWPose on torch: the ONNX graphs converted by onnx2torch compute what onnxruntime
computes (tiny random graphs built with the onnx package in the published files'
input/output layouts), the whole detection gives the same people on both, and the
keypoint decoding and COCO-wholebody -> OpenPose mapping follow DWPose's annotator."""
import numpy as np
import pytest
import torch

import tiny_pose
from lllite_kit.preprocessors.pose import dwpose, onnx_rewrites, onnx_torch

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_pose.write_dwpose(tmp_path_factory.mktemp("dwpose"))


@pytest.fixture(scope="module")
def runners(files):
    torch_runners = [onnx_torch.OnnxModel(str(files[k]), k).eval() for k in ("detector", "estimator")]
    ort_runners = [onnx_torch.OrtModel(str(files[k])) for k in ("detector", "estimator")]
    return torch_runners, ort_runners


def test_torch_runs_the_graphs_as_onnxruntime_does(runners):
    """float32 on both sides with different kernels: equal to 1e-5 of the outputs' range."""
    (det, est), (det_ort, est_ort) = runners
    assert det.input_shape == (1, 3, 640, 640) and est.input_shape == (1, 3, 384, 288)
    g = torch.Generator().manual_seed(0)
    for ours, ref, x in ((det, det_ort, torch.rand(1, 3, 640, 640, generator=g) * 255),
                         (est, est_ort, torch.randn(1, 3, 384, 288, generator=g))):
        with torch.no_grad():
            a = ours(x)
        b = ref(x)
        assert len(a) == len(b)
        for t, o in zip(b, a):
            assert t.shape == o.shape and (o - t).abs().max() <= 1e-5 * t.abs().max()


def _kinds(net) -> list[str]:
    return sorted(type(m).__name__ for m in net.modules() if not isinstance(m, torch.fx.GraphModule))


def test_graph_rewrites_fuse_exactly_their_patterns_and_compute_as_onnxruntime(tmp_path):
    """SiLU (Sigmoid x Mul, either order) is fused and the near misses are kept; on the CPU
    six convolutions are packed (not the one with asymmetric pads), a lone ReLU or LeakyReLU
    after one fused in, a lone SiLU after a depthwise one fused in as swish and after a
    dense one run in place (in the CPU copy only); outputs equal
    onnxruntime's to 1e-5 of their range on the CPU path and on the plain graph (grad
    enabled), and the packed weights follow an in-place weight edit. The graph converts at
    all only because the Clip's empty max name is dropped first."""
    path = tiny_pose.write_rewrite_cases(tmp_path / "cases.onnx")
    model = onnx_torch.OnnxModel(str(path), "cases").eval()
    kinds = _kinds(model.net)
    assert kinds.count("SiLU") == 3 and kinds.count("Sigmoid") == 1 and kinds.count("OnnxBinaryMathOperation") == 3
    packed = [m for m in model.cpu_net().modules() if isinstance(m, onnx_rewrites.PackedConv2d)]
    assert sorted((m.attr, m.scalars) for m in packed) == [("leaky_relu", [pytest.approx(0.1)]), ("none", []),
                                                          ("none", []), ("none", []), ("relu", []), ("swish", [])]
    assert next(m for m in packed if m.attr == "swish").conv.groups == 8
    cpu = model.cpu_net()
    cpu_kinds = _kinds(cpu)
    assert cpu_kinds.count("ReLU") == 1 and "LeakyReLU" not in cpu_kinds and cpu_kinds.count("SiLU") == 2
    silus = [(cpu.get_submodule(n.target).inplace, model.net.get_submodule(n.target).inplace)
             for n in cpu.graph.nodes
             if n.op == "call_module" and isinstance(cpu.get_submodule(n.target), torch.nn.SiLU)]
    assert silus == [(True, False), (True, False)]  # in place on the copy only
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    (ref,) = onnx_torch.OrtModel(str(path))(x)
    with torch.no_grad():
        (fast,) = model(x)
    with torch.enable_grad():
        (plain,) = model(x)
    for out in (fast, plain):
        assert out.shape == ref.shape == (1, 8, 7, 7) and (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    net = model.cpu_net()
    with torch.no_grad():
        next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(-2.0)
        (edited,) = model(x)
    with torch.enable_grad():
        (edited_plain,) = model(x)
    assert model.cpu_net() is not net and (edited - fast).abs().max() > 0.1 * ref.abs().max()
    assert (edited - edited_plain).abs().max() <= 1e-5 * edited_plain.abs().max()


def test_same_people_on_torch_and_onnxruntime(runners):
    (det, est), (det_ort, est_ort) = runners
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = dwpose.detect_people(det, est, (288, 384), image[None], "cpu")[0]
    ref = dwpose.detect_people(det_ort, est_ort, (288, 384), image[None], "cpu")[0]
    assert len(ours) == len(ref) > 0
    for o, r in zip(ours, ref):
        for part in ("body", "left_hand", "right_hand", "face", "feet"):
            a, b = getattr(o, part), getattr(r, part)
            assert (a is None) == (b is None), part
            for p, q in zip(a or [], b or []):
                assert (p is None) == (q is None) and (p is None or np.allclose(p, q, atol=1e-6)), part


@pytest.mark.parametrize("batch, together", [("fixed", False), ("free", True), ("mixing", False)])
def test_crops_share_a_run_only_where_each_gets_its_own_answer(tmp_path, batch, together):
    """run_batched on both runtimes: several crops per run where the graph allows it
    (checked once, before the first batch), one by one where its batch is fixed at 1 or where
    a larger batch would mix the crops; either way each crop's outputs equal its outputs
    alone (1e-5 of their range). The packed CPU convolution weights are reordered once for
    single crops and once for batches, not again when the batch size changes."""
    path = tiny_pose.write_rtmpose(tmp_path / f"{batch}.onnx", batch=batch)
    x = torch.randn(3, 3, 384, 288, generator=torch.Generator().manual_seed(0))
    ours = onnx_torch.OnnxModel(str(path), "estimator").eval()
    sizes = []
    ours.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    for model in (ours, onnx_torch.OrtModel(str(path))):
        with torch.no_grad():
            out = onnx_torch.run_batched(model, x, most=2)
            alone = [model(x[i:i + 1]) for i in range(3)]
        assert model.batches is together
        for o, parts in zip(out, zip(*alone)):
            ref = torch.cat(parts)
            assert o.shape == ref.shape and o.shape[0] == 3 and (o - ref).abs().max() <= 1e-5 * ref.abs().max()
    if together:
        sizes.clear()
        packed = [m for m in ours.cpu_net().modules() if isinstance(m, onnx_rewrites.PackedConv2d)]
        weights = [dict(m.packed) for m in packed]
        with torch.no_grad():
            onnx_torch.run_batched(ours, torch.cat([x, x]), most=4)
            ours(x[:1])
        assert sizes == [4, 2, 1] and len(packed) == 1 and set(weights[0]) == {False, True}
        assert all(m.packed[k][1] is w[k][1] for m, w in zip(packed, weights) for k in w)


def test_pictures_with_several_people_give_each_person_its_keypoints(runners):
    """Crops of several pictures in one estimator call: each picture gets its own people,
    equal to running the pictures one at a time."""
    (det, est), _ = runners
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 96, 128, 3), dtype=np.uint8)
    boxes = [np.array([[10.0, 20.0, 50.0, 90.0], [60.0, 5.0, 120.0, 95.0]]), np.zeros((0, 4)),
             np.array([[0.0, 0.0, 128.0, 96.0]])]
    with torch.no_grad():
        together = dwpose.estimate_keypoints(est, images, boxes, (288, 384), "cpu")
        alone = [dwpose.estimate_keypoints(est, image[None], [b], (288, 384), "cpu")[0] for image, b in zip(images, boxes)]
    assert [len(k) for k, _ in together] == [2, 0, 1]
    for (k, s), (ka, sa) in zip(together, alone):
        assert np.allclose(k, ka) and np.allclose(s, sa)
    assert not np.allclose(together[0][0][0], together[0][0][1])


def _simcc_at(x_index: int, y_index: int, score: float = 1.0):
    sx, sy = torch.zeros(1, 133, 576), torch.zeros(1, 133, 768)
    sx[..., x_index], sy[..., y_index] = score, score
    return lambda _: (sx, sy)


def test_simcc_decoding_maps_the_crop_back_to_the_box():
    """Box 40 x 80 at (10, 20): padded 1.25x and widened to the network's 3:4 -> 75 x 100
    around (30, 60). SimCC bins are half pixels of the 288 x 384 crop."""
    image = np.zeros((120, 100, 3), np.uint8)
    box = np.array([[10.0, 20.0, 50.0, 100.0]])
    for (ix, iy), expected in (((288, 384), (30.0, 60.0)), ((0, 0), (-7.5, 10.0)), ((576 - 1, 768 - 1),
                                                                                    (67.5 - 75 / 576, 110 - 100 / 768))):
        ((kp, scores),) = dwpose.estimate_keypoints(_simcc_at(ix, iy), image[None], [box], (288, 384), "cpu")
        assert kp.shape == (1, 133, 2) and np.allclose(kp[0], expected, atol=1e-4) and (scores == 1.0).all()
    ((kp, _),) = dwpose.estimate_keypoints(_simcc_at(5, 5, score=0.0), image[None], [box], (288, 384), "cpu")
    assert np.allclose(kp[0, 0], np.array([-1, -1]) / 2 / np.array([288, 384]) * [75, 100] + [30, 60] - [37.5, 50])


def test_wholebody_to_openpose_layout():
    """COCO-wholebody order -> OpenPose's 18 body points (neck = shoulders' mean), feet,
    68 face points + both eyes, 21 per hand; points under 0.3 are dropped."""
    kp = np.stack([np.arange(133, dtype=float), np.arange(133, dtype=float) * 2], -1)[None]
    scores = np.full((1, 133), 0.9)
    scores[0, 10] = 0.29  # left wrist: too uncertain
    scores[0, 91:112] = 0.1  # the whole left hand
    (person,) = dwpose.to_people(dwpose.to_openpose_order(kp, scores), height=2, width=1)
    coco = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]  # OpenPose index -> COCO index
    for i, c in enumerate(coco):
        expected = (5.5, 5.5) if c is None else (None if c == 10 else (float(c), float(c)))
        assert person.body[i] == expected, i
    assert person.left_hand is None and person.right_hand == [(float(c), float(c)) for c in range(112, 133)]
    assert len(person.face) == 70 and person.face[0] == (23.0, 23.0) and person.face[-2:] == [person.body[14],
                                                                                             person.body[15]]
    assert person.feet == [(float(c), float(c)) for c in range(17, 23)]
