"""Tiny random-weight pose files in the public layouts (no downloads here): the OpenPose
networks with flat keys as in body_pose_model.pth / hand_pose_model.pth / facenet.pth, at
a small width; DWPose ONNX graphs are built in test_pose_dwpose.py."""
from pathlib import Path

import torch

from lllite_kit.preprocessors.pose import openpose_nets as nets


def _conv(shapes: dict, name: str, c_in: int, c_out: int, k: int) -> int:
    shapes[name] = (c_out, c_in, k, k)
    return c_out


def _front(shapes: dict, names: list[str], width: int) -> int:
    c = 3
    for name in names:
        c = _conv(shapes, name, c, width, 3)
    return c


def body_shapes(width: int = 4) -> dict:
    shapes = {}
    feat = _front(shapes, nets.BODY_FRONT, width)
    for stage in [1, *nets.STAGES]:
        for limb, out in ((1, 38), (2, 19)):
            names = nets.body_branch(stage, limb)
            c = feat if stage == 1 else 38 + 19 + feat
            kernels = [3, 3, 3, 1, 1] if stage == 1 else [7, 7, 7, 7, 7, 1, 1]
            for i, (name, k) in enumerate(zip(names, kernels)):
                c = _conv(shapes, name, c, out if i == len(names) - 1 else width, k)
    return shapes


def cpm_shapes(outputs: int, width: int = 4) -> dict:
    shapes = {}
    feat = _front(shapes, nets.CPM_FRONT, width)
    c = _conv(shapes, "conv6_1_CPM", feat, width, 1)
    _conv(shapes, "conv6_2_CPM", c, outputs, 1)
    for stage in nets.STAGES:
        c = outputs + feat
        for i, (name, k) in enumerate(zip(nets.cpm_stage(stage), [7, 7, 7, 7, 7, 1, 1])):
            c = _conv(shapes, name, c, outputs if i == 6 else width, k)
    return shapes


def _write(path: Path, shapes: dict, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (o, i, k, _) in shapes.items():
        sd[name + ".weight"] = torch.randn(o, i, k, k, generator=g) * (2.0 / (i * k * k)) ** 0.5
        sd[name + ".bias"] = torch.randn(o, generator=g) * 0.1
    torch.save(sd, path)
    return path


def write_openpose(folder: Path, seed: int = 0, width: int = 4) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"body": _write(folder / "body_pose_model.pth", body_shapes(width), seed),
            "hand": _write(folder / "hand_pose_model.pth", cpm_shapes(22, width), seed + 1),
            "face": _write(folder / "facenet.pth", cpm_shapes(71, width), seed + 2)}


def _onnx_model(nodes, inputs, outputs, inits, path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "tiny", inputs, outputs,
                              [numpy_helper.from_array(v.astype("float32") if v.dtype.kind == "f" else v, k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_yolox(path: Path, seed: int = 0, width: int = 8) -> Path:
    """A YOLOX-shaped graph: (1, 3, 640, 640) -> (1, 8400, 85) raw box offsets and sigmoid
    objectness/class scores at strides 8, 16, 32, with the ops the export uses (Conv,
    SiLU as Sigmoid*Mul, Resize, Add, Slice, Concat, Reshape, Transpose). Biases make the
    stride-32 cells see large, confident people, so detections exist."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits, nodes = {}, []

    def conv(name, x, c_in, c_out, k, s, bias=None):
        inits[name + "_w"] = rng.normal(0, (1.0 / (c_in * k * k)) ** 0.5, (c_out, c_in, k, k))
        inits[name + "_b"] = rng.normal(0, 0.1, c_out) if bias is None else bias
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], kernel_shape=[k, k],
                                      strides=[s, s]))
        return name

    def silu(x):
        nodes.append(helper.make_node("Sigmoid", [x], [x + "_sig"]))
        nodes.append(helper.make_node("Mul", [x, x + "_sig"], [x + "_silu"]))
        return x + "_silu"

    p3 = silu(conv("p3", "images", 3, width, 8, 8))
    inits["p3_w"] /= 255.0  # YOLOX takes 0-255 pixels
    p4 = silu(conv("p4", p3, width, width, 2, 2))
    p5 = silu(conv("p5", p4, width, width, 2, 2))
    inits["up_scales"] = np.array([1, 1, 2, 2], dtype=np.float32)
    nodes.append(helper.make_node("Resize", [p5, "", "up_scales"], ["p5_up"], mode="nearest"))
    nodes.append(helper.make_node("Add", [p4, "p5_up"], ["p4_sum"]))
    inits["starts"], inits["ends"], inits["axes"] = (np.array([v], dtype=np.int64) for v in (4, 85, 1))
    inits["starts0"], inits["ends0"] = np.array([0], dtype=np.int64), np.array([4], dtype=np.int64)
    inits["flat_shape"] = np.array([1, 85, -1], dtype=np.int64)
    flats = []
    for level, x, stride in (("h3", p3, 8), ("h4", "p4_sum", 16), ("h5", p5, 32)):
        bias = rng.normal(0, 0.1, 85)
        bias[2:4] = np.log(640 / stride) if level == "h5" else 0.0  # stride-32 boxes: a whole-image person
        bias[4] = 3.0 if level == "h5" else -6.0
        bias[5] = 3.0
        h = conv(level, x, width, 85, 1, 1, bias)
        inits[h + "_w"] *= 0.05  # outputs near the biases: finite boxes, scores set by the biases
        nodes.append(helper.make_node("Slice", [h, "starts0", "ends0", "axes"], [h + "_reg"]))
        nodes.append(helper.make_node("Slice", [h, "starts", "ends", "axes"], [h + "_cls"]))
        nodes.append(helper.make_node("Sigmoid", [h + "_cls"], [h + "_prob"]))
        nodes.append(helper.make_node("Concat", [h + "_reg", h + "_prob"], [h + "_out"], axis=1))
        nodes.append(helper.make_node("Reshape", [h + "_out", "flat_shape"], [h + "_flat"]))
        flats.append(h + "_flat")
    nodes.append(helper.make_node("Concat", flats, ["all"], axis=2))
    nodes.append(helper.make_node("Transpose", ["all"], ["output"], perm=[0, 2, 1]))
    return _onnx_model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])], inits, path)


def write_rtmpose(path: Path, seed: int = 0, batch: str = "fixed") -> Path:
    """An RTMPose-shaped graph: (1, 3, 384, 288) -> simcc_x (1, 133, 576), simcc_y (1, 133, 768),
    through Conv, Relu, Reshape, an RMS ScaleNorm (Pow, ReduceMean, Sqrt, Div, Mul) and MatMul.
    batch: "fixed" (1 in the input and in the reshape, as a batch-1 export writes it), "free"
    (a named batch dimension, -1 in the reshape) or "mixing" (a named batch dimension, but a
    transpose before the reshape that equals the fixed graph at batch 1 and mixes the
    inputs of a larger batch)."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = {"c_w": rng.normal(0, 0.02, (133, 3, 32, 32)), "c_b": rng.normal(0, 0.1, 133),
             "shape": np.array([1 if batch == "fixed" else -1, 133, 108], dtype=np.int64), "two": np.array(2.0, dtype=np.float32),
             "gain": rng.normal(1, 0.1, 108), "wx": rng.normal(0, 0.3, (108, 576)),
             "wy": rng.normal(0, 0.3, (108, 768))}
    nodes = [helper.make_node("Conv", ["input", "c_w", "c_b"], ["c"], kernel_shape=[32, 32], strides=[32, 32]),
             helper.make_node("Relu", ["c"], ["r"]),
             *([helper.make_node("Transpose", ["r"], ["rt"], perm=[1, 0, 2, 3])] if batch == "mixing" else []),
             helper.make_node("Reshape", ["rt" if batch == "mixing" else "r", "shape"], ["f"]),
             helper.make_node("Pow", ["f", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Sqrt", ["ms"], ["rms"]),
             helper.make_node("Div", ["f", "rms"], ["n"]),
             helper.make_node("Mul", ["n", "gain"], ["g"]),
             helper.make_node("MatMul", ["g", "wx"], ["simcc_x"]),
             helper.make_node("MatMul", ["g", "wy"], ["simcc_y"])]
    n = 1 if batch == "fixed" else "batch"
    return _onnx_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, 384, 288])],
                       [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [n, 133, 576]),
                        helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [n, 133, 768])], inits, path)


def write_dwpose(folder: Path, seed: int = 0) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"detector": write_yolox(folder / "yolox_l.onnx", seed),
            "estimator": write_rtmpose(folder / "dw-ll_ucoco_384.onnx", seed + 1)}


def write_rewrite_cases(path: Path, seed: int = 0) -> Path:
    """A small graph of the patterns our graph rewrites match and of near misses they must
    leave alone: SiLU exported as Sigmoid and Mul in both operand orders (fused), a Sigmoid
    that feeds two Muls (kept), Mul(y, sigmoid(x)) with y != x (kept), convolutions followed
    by Relu, LeakyRelu (depthwise) and, after a depthwise one, SiLU (fused into the packed
    convolution), a SiLU after a dense one (run in place), one whose
    output feeds two nodes (not fused), and one with asymmetric pads (onnx2torch pads it
    separately: not packed); it ends in a Clip whose max is skipped by an empty input name.
    (1, 4, 16, 16) -> (1, 8, 7, 7)."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits, nodes = {}, []

    def conv(name, x, c_in, c_out, k, group=1, **attrs):
        inits[name + "_w"] = rng.normal(0, (1.0 / (c_in // group * k * k)) ** 0.5, (c_out, c_in // group, k, k))
        inits[name + "_b"] = rng.normal(0, 0.1, c_out)
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], kernel_shape=[k, k], group=group,
                                      **attrs))
        return name

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [name], **attrs))
        return name

    c1 = conv("c1", "input", 4, 8, 3, pads=[1, 1, 1, 1])
    m1 = op("Mul", [c1, op("Sigmoid", [c1], "s1")], "m1")  # SiLU, x * sigmoid(x)
    c2 = conv("c2", m1, 8, 8, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    m2 = op("Mul", [op("Sigmoid", [c2], "s2"), c2], "m2")  # SiLU, sigmoid(x) * x
    cd = conv("cd", m2, 8, 8, 5, group=8, pads=[2, 2, 2, 2])
    md = op("Mul", [cd, op("Sigmoid", [cd], "sd")], "md")  # SiLU after a depthwise conv: swish post-op
    c3 = op("Relu", [conv("c3", md, 8, 8, 1)], "r3")
    c4 = op("LeakyRelu", [conv("c4", c3, 8, 8, 3, group=8, pads=[1, 1, 1, 1])], "l4", alpha=0.1)
    c5 = conv("c5", c4, 8, 8, 3, pads=[0, 0, 1, 1])  # asymmetric pads: 8 x 8 -> 7 x 7
    s5 = op("Sigmoid", [c5], "s5")  # feeds two Muls: no SiLU
    m5 = op("Mul", [c5, s5], "m5")
    c6 = conv("c6", m5, 8, 8, 3, pads=[1, 1, 1, 1])  # feeds Relu and Add: no fusion
    a6 = op("Add", [op("Relu", [c6], "r6"), c6], "a6")
    g = op("Mul", [a6, s5], "g")  # y * sigmoid(x), y != x: no SiLU
    inits["clip_min"] = np.array(-0.05)
    op("Clip", [g, "clip_min", ""], "output")  # max skipped by an empty name, as torch.onnx writes clamp(min=)
    return _onnx_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 16, 16])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 7, 7])], inits, path)


def write_winograd_case(path: Path, seed: int = 0, width: int = 128) -> Path:
    """Three 3 x 3 convolutions with padding 1, as YOLOX's and CSPNeXt's: 3 -> width (then
    Relu), width -> width (then LeakyRelu), width -> width (then SiLU as Sigmoid and Mul); on
    a (1, 3, 40, 44) input, work enough for the Winograd path on the last two."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits, nodes = {}, []

    def conv(name, x, c_in, c_out):
        inits[name + "_w"] = rng.normal(0, (1.0 / (c_in * 9)) ** 0.5, (c_out, c_in, 3, 3))
        inits[name + "_b"] = rng.normal(0, 0.1, c_out)
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        return name

    nodes.append(helper.make_node("Relu", [conv("c1", "input", 3, width)], ["r1"]))
    nodes.append(helper.make_node("LeakyRelu", [conv("c2", "r1", width, width)], ["l2"], alpha=0.1))
    c3 = conv("c3", "l2", width, width)
    nodes.append(helper.make_node("Sigmoid", [c3], ["s3"]))
    nodes.append(helper.make_node("Mul", [c3, "s3"], ["output"]))
    return _onnx_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 40, 44])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width, 40, 44])], inits, path)
