"""Winograd F(4 x 4, 3 x 3) convolutions (the DWPose CPU graph's 3 x 3 convolutions of 128
channels or more): equal to a float64 convolution to 2e-5 of the output's range (measured
5e-6 to 8e-6; oneDNN's direct convolution 1e-6 to 2e-6: the transforms add rounding, not
error of method), whatever the input's size, layout, batch or the fused activation; below
the work the transforms pay for, the direct convolution runs instead; and in a converted
graph they compute what onnxruntime computes."""
import pytest
import torch
import torch.nn.functional as F

import tiny_pose
from lllite_kit.preprocessors.pose import onnx_rewrites, onnx_torch, winograd

TOLERANCE = 2e-5  # of the output's range

ACTIVATIONS = {"none": ([], lambda y: y), "relu": ([], F.relu), "leaky_relu": ([0.1], lambda y: F.leaky_relu(y, 0.1)),
               "swish": ([], F.silu)}


def _conv(c_in: int, c_out: int, bias: bool = True, seed: int = 0) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).eval()


def _modules(conv, attr):
    scalars, _ = ACTIVATIONS[attr]
    direct = onnx_rewrites.PackedConv2d(conv, attr, scalars)
    return winograd.WinogradConv2d(conv, attr, scalars, direct), direct


@torch.no_grad()
def _reference(conv, x, attr):
    b = None if conv.bias is None else conv.bias.double()
    return ACTIVATIONS[attr][1](F.conv2d(x.double(), conv.weight.double(), b, padding=1))


@pytest.mark.parametrize("shape, c_out, bias, channels_last, attr", [
    ((2, 128, 22, 30), 128, True, False, "none"),     # a batch; 22 x 30: the last tiles overhang
    ((1, 192, 33, 17), 128, False, True, "relu"),     # channels last, no bias, in != out
    ((1, 128, 40, 44), 256, True, True, "leaky_relu"),
    ((3, 128, 20, 20), 128, True, False, "swish"),
])
def test_winograd_equals_the_direct_convolution(shape, c_out, bias, channels_last, attr):
    conv = _conv(shape[1], c_out, bias)
    fast, direct = _modules(conv, attr)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = _reference(conv, x, attr)
    with torch.no_grad():
        out, plain = fast(x), direct(x)
    assert fast.transformed is not None and not torch.equal(out, plain)  # it took the Winograd path
    assert out.shape == ref.shape == (shape[0], c_out, *shape[2:])
    error = float((out.double() - ref).abs().max() / ref.abs().max())
    assert error <= TOLERANCE, error
    assert float((plain.double() - ref).abs().max() / ref.abs().max()) <= TOLERANCE


def test_small_inputs_run_the_direct_convolution():
    """20 x 20 at 128 channels: 25 tiles x 128 < MIN_WORK; two such pictures: 50 x 128 is not."""
    conv = _conv(128, 128)
    fast, direct = _modules(conv, "relu")
    x = torch.randn(1, 128, 20, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fast(x), direct(x)) and fast.transformed is None
        pair = torch.cat([x, x])
        assert not torch.equal(fast(pair), direct(pair)) and fast.transformed is not None


@pytest.mark.parametrize("conv, fits", [
    (torch.nn.Conv2d(128, 128, 3, padding=1), True),
    (torch.nn.Conv2d(256, 512, 3, padding=1, bias=False), True),
    (torch.nn.Conv2d(64, 128, 3, padding=1), False),          # too few channels for the transforms to pay
    (torch.nn.Conv2d(128, 64, 3, padding=1), False),
    (torch.nn.Conv2d(128, 128, 3, stride=2, padding=1), False),
    (torch.nn.Conv2d(128, 128, 3, padding=2, dilation=2), False),
    (torch.nn.Conv2d(128, 128, 3, padding=1, groups=2), False),
    (torch.nn.Conv2d(128, 128, 3, padding=0), False),
    (torch.nn.Conv2d(128, 128, 5, padding=2), False),
    (torch.nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"), False),
])
def test_which_convolutions_fit(conv, fits):
    assert winograd.winograd_fits(conv) is fits


def test_graph_convolutions_run_winograd_and_compute_as_onnxruntime(tmp_path):
    """In the CPU graph the two 128-channel convolutions are Winograd ones with their ReLU
    and LeakyReLU fused (the first, 3 input channels, stays packed); the SiLU runs in place
    after the last. Outputs equal onnxruntime's to 1e-5 of their range."""
    pytest.importorskip("onnxruntime")
    path = tiny_pose.write_winograd_case(tmp_path / "winograd.onnx")
    model = onnx_torch.OnnxModel(str(path), "winograd").eval()
    fast = [m for m in model.cpu_net().modules() if isinstance(m, winograd.WinogradConv2d)]
    assert sorted((m.attr, m.scalars) for m in fast) == [("leaky_relu", [pytest.approx(0.1)]), ("none", [])]
    assert [type(m) for m in model.cpu_net().modules()].count(onnx_rewrites.PackedConv2d) == 3  # 1 + 2 inside
    x = torch.rand(1, 3, 40, 44, generator=torch.Generator().manual_seed(0))
    (ref,) = onnx_torch.OrtModel(str(path))(x)
    with torch.no_grad():
        (out,) = model(x)
    assert all(m.transformed is not None for m in fast)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * ref.abs().max()
