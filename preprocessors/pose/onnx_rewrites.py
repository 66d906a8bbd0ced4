"""Rewrites of an onnx2torch graph (torch.fx) that make it faster and compute the same.

- `fuse_silu`: exports write SiLU, x * sigmoid(x), as a Sigmoid and a Mul; one SiLU module
  does it in one pass, without the intermediate tensor (any device).
- `cpu_graph`: for float32 inference on the CPU, a copy of the graph whose 2-D convolutions
  run oneDNN with their weights reordered once (eager torch reorders them on every call
  and sends single-threaded 1 x 1 convolutions to a slower im2col + GEMM path: a fifth to
  a quarter of a DWPose forward), on channels-last activations (oneDNN's
  native order: no reorder per call), and 3 x 3 ones with 128 channels or more by
  Winograd's F(4 x 4, 3 x 3) where the input is large enough (.winograd); a ReLU or
  LeakyReLU that is a convolution's only consumer is fused into it, as is a SiLU after a
  depthwise one; any other SiLU runs in place on its convolution's output. The copy shares
  every other module and tensor with the original graph.

Each rewrite matches its pattern exactly (operator, operands, single consumer) and leaves
anything else as it is, so any graph onnx2torch produces stays correct."""
import functools
from collections import Counter

import torch
from torch import fx, nn

from .winograd import WinogradConv2d, winograd_fits

# Activations fused into a packed convolution as oneDNN post-ops: module type -> (attr, scalars).
# SiLU is fused only after a depthwise convolution (oneDNN's swish post-op, _swish_fuses):
# after a dense one it measured slower in a whole forward (AVX2) than torch's own SiLU run in
# place on the convolution's output, which cpu_graph does there instead.
_FUSABLE = {
    nn.ReLU: lambda m: ("relu", []),
    nn.LeakyReLU: lambda m: ("leaky_relu", [m.negative_slope]),
}


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_plain_mul(gm: fx.GraphModule, node: fx.Node) -> bool:
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation

    m = _module(gm, node)
    return (isinstance(m, OnnxBinaryMathOperation) and m.math_op_function is torch.mul
            and not (m.broadcast == 1 and m.axis is not None) and len(node.args) == 2 and not node.kwargs)


def fuse_silu(gm: fx.GraphModule) -> int:
    """x * sigmoid(x) (either operand order), where the sigmoid feeds only that product,
    becomes SiLU(x). Returns how many were fused."""
    fused = 0
    for sig in list(gm.graph.nodes):
        if not isinstance(_module(gm, sig), nn.Sigmoid) or len(sig.args) != 1 or sig.kwargs or len(sig.users) != 1:
            continue
        (mul,) = sig.users
        x = sig.args[0]
        if not _is_plain_mul(gm, mul) or set(mul.args) != {x, sig}:
            continue
        silu = f"{mul.target}_silu"
        if hasattr(gm, silu):  # a name the graph already uses (never in onnx2torch's naming)
            continue
        gm.add_submodule(silu, nn.SiLU())
        with gm.graph.inserting_before(mul):
            node = gm.graph.call_module(silu, (x,))
        mul.replace_all_uses_with(node)
        gm.graph.erase_node(mul)
        gm.graph.erase_node(sig)
        fused += 1
    if fused:
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return fused


def cpu_inference_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and \
        hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class PackedConv2d(nn.Module):
    """A float32 CPU Conv2d through oneDNN, weights reordered for the input it gets, an
    activation fused in; inference only (no autograd). One reordering for single inputs and
    one for batches, each kept until its channels x height x width change: oneDNN may lay the
    weights out differently for a batch of one and a batch of more (two AVX2 threads: yes,
    and then it reorders them again inside every call, which made an RTMPose-L crop pair
    575 ms after single crops against 248 ms with their own reordering), while batches of
    two and of four shared one (493 against 480 ms for four); reordering at every change of
    batch would cost 25 ms a forward where one- and four-crop runs alternate."""

    def __init__(self, conv: nn.Conv2d, attr: str = "none", scalars: list | None = None):
        super().__init__()
        self.conv, self.attr, self.scalars = conv, attr, scalars or []
        self.packed = {}  # batch of more than one? -> (C, H, W it was reordered for, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = x.contiguous(memory_format=torch.channels_last)
        batched = x.shape[0] > 1
        for_shape, weights = self.packed.get(batched, (None, None))
        if for_shape != x.shape[1:]:
            weights = torch._C._nn.mkldnn_reorder_conv2d_weight(
                c.weight.detach().to_mkldnn(), list(c.padding), list(c.stride), list(c.dilation), c.groups,
                list(x.shape))
            self.packed[batched] = (x.shape[1:], weights)
        return torch.ops.mkldnn._convolution_pointwise(x, weights, c.bias, list(c.padding), list(c.stride),
                                                      list(c.dilation), c.groups, self.attr, self.scalars, "")


def _swish_fuses(conv: nn.Conv2d) -> bool:
    """Depthwise: RTMPose's 5 x 5 convolutions with the swish post-op made a single-thread
    estimator forward about 1-2 % faster (medians of 25 forwards, in ten rounds against the
    SiLU run in place: 253-264 ms against 255-268 ms, faster in nine); fused into the dense
    convolutions too it was slower (265-275 ms)."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _packable(m) -> bool:
    return (type(m) is nn.Conv2d and isinstance(m.padding, tuple) and m.padding_mode == "zeros"
            and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
            and (m.bias is None or m.bias.dtype == torch.float32))


def cpu_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of gm for float32 CPU inference: 2-D convolutions packed (or Winograd), a ReLU
    or LeakyReLU that is one's only consumer fused in (a SiLU too after a depthwise one), any
    other SiLU that is one's only consumer run in place."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    root = {n.target: functools.reduce(getattr, n.target.split("."), gm)
            for n in graph.nodes if n.op in ("call_module", "get_attr")}
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in list(graph.nodes):
        conv = root.get(node.target) if node.op == "call_module" else None
        if not _packable(conv) or calls[node.target] != 1:
            continue
        attr, scalars = "none", []
        if len(node.users) == 1:
            (act,) = node.users
            module = root.get(act.target) if act.op == "call_module" else None
            if act.args == (node,) and not act.kwargs and calls[act.target] == 1:
                post_op = _FUSABLE[type(module)](module) if type(module) in _FUSABLE else \
                    ("swish", []) if type(module) is nn.SiLU and _swish_fuses(conv) else None
                if post_op:
                    attr, scalars = post_op
                    act.replace_all_uses_with(node)
                    graph.erase_node(act)
                elif type(module) is nn.SiLU:  # the convolution's output is its alone: overwrite it
                    root[act.target] = nn.SiLU(inplace=True)
        packed = PackedConv2d(conv, attr, scalars)
        root[node.target] = WinogradConv2d(conv, attr, scalars, packed) if winograd_fits(conv) else packed
    graph.lint()
    return fx.GraphModule(root, graph)
