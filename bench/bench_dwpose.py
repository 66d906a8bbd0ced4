"""DWPose's two ONNX graphs on torch (onnx2torch, our default backend) against onnxruntime
(the optional accelerator) running the same files, in the same process, interleaved A B B A,
medians. Only the network forwards are timed: box decoding, keypoint decoding and drawing
are the same code on both backends.

The published files (yolox_l.onnx, dw-ll_ucoco_384.onnx) cannot be downloaded here, so the
graphs are stand-ins of realistic cost exported with torch.onnx from timm's CSPDarknet-53
(a CSP backbone like YOLOX-L's and RTMPose-L's) with the published input and output layouts:
the detector (1, 3, 640, 640) -> (1, 8400, 85) from stride 8/16/32 heads, the estimator
(1, 3, 384, 288) -> SimCC x (1, 133, 576) and y (1, 133, 768). Convolutions dominate both
the stand-ins and the real graphs; the real graphs' other operators (SiLU, the estimator's
gated attention unit) are not in the stand-ins, so the ratio on the real files may differ.

    .venv/bin/python bench/bench_dwpose.py            # stand-ins of realistic cost, CPU
    .venv/bin/python bench/bench_dwpose.py --smoke    # the tiny test graphs, seconds"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DETECTOR_INPUT, ESTIMATOR_INPUT = (1, 3, 640, 640), (1, 3, 384, 288)


class _Detector(torch.nn.Module):
    """Backbone features at strides 8, 16, 32 -> 85 channels each (4 box, 1 object, 80
    classes), flattened and concatenated to YOLOX's (1, 8400, 85)."""

    def __init__(self):
        super().__init__()
        import timm

        self.backbone = timm.create_model("cspdarknet53", pretrained=False, features_only=True, out_indices=(3, 4, 5))
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(c, 85, 1) for c in self.backbone.feature_info.channels())

    def forward(self, x):
        maps = [head(f) for head, f in zip(self.heads, self.backbone(x))]
        return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)


class _Estimator(torch.nn.Module):
    """Stride-32 features -> 133 keypoint channels, each flattened (12 x 9 = 108) and
    projected to RTMPose's SimCC x (576 bins) and y (768 bins)."""

    def __init__(self):
        super().__init__()
        import timm

        self.backbone = timm.create_model("cspdarknet53", pretrained=False, features_only=True, out_indices=(5,))
        self.keypoints = torch.nn.Conv2d(self.backbone.feature_info.channels()[-1], 133, 1)
        self.x, self.y = torch.nn.Linear(108, 576), torch.nn.Linear(108, 768)

    def forward(self, x):
        k = self.keypoints(self.backbone(x)[-1]).flatten(2)
        return self.x(k), self.y(k)


def _export(net: torch.nn.Module, shape: tuple, outputs: list[str], path: Path) -> Path:
    """Exported as trained networks are: batch norms folded into the convolutions. Their
    statistics are randomised first, as a trained network's are; left at their defaults,
    many folded biases are equal and the exporter shares them through Identity nodes,
    which no real export has (and onnx2torch reads convolution biases only from initializers)."""
    net.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
        torch.onnx.export(net, (torch.rand(*shape),), str(path), input_names=["input"], output_names=outputs,
                          opset_version=17, dynamo=False)
    return path


def stand_in_files(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    return {"detector": _export(_Detector(), DETECTOR_INPUT, ["output"], folder / "yolox_l.onnx"),
            "estimator": _export(_Estimator(), ESTIMATOR_INPUT, ["simcc_x", "simcc_y"], folder / "dw-ll_ucoco_384.onnx")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="A B B A rounds per graph")
    p.add_argument("--smoke", action="store_true", help="the tiny test graphs, one round")
    opts = p.parse_args()
    if opts.smoke:
        opts.rounds = 1
        benchlib.smoke_threads()
    benchlib.bootstrap(cpu=True)
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("onnxruntime is not installed (pip install onnxruntime): nothing to compare against")
    from lllite_kit.preprocessors.pose.onnx_torch import OnnxModel, OrtModel

    print(f"machine: {benchlib.machine()}, onnxruntime {ort.__version__} (CPU), "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        if opts.smoke:
            sys.path.insert(0, str(benchlib.REPO / "tests"))
            import tiny_pose

            files = tiny_pose.write_dwpose(Path(tmp))
            print("graphs: the tiny test graphs (smoke)")
        else:
            files = stand_in_files(Path(tmp))
            print("graphs: timm CSPDarknet-53 stand-ins with the published input/output layouts")
        for kind in ("detector", "estimator"):
            ours, theirs = OnnxModel(str(files[kind]), kind).eval(), OrtModel(str(files[kind]))
            x = torch.rand(*ours.input_shape) * (255 if kind == "detector" else 1)
            with torch.no_grad():
                a, b = ours(x), theirs(x)
            error = max(float((o - t).abs().nan_to_num(0).max() / t.abs().nan_to_num(0).max().clamp(min=1e-12))
                        for o, t in zip(a, b))

            def torch_run():
                with torch.no_grad():
                    ours(x)

            times = benchlib.interleaved({"torch": torch_run, "onnxruntime": lambda: theirs(x)}, opts.rounds)
            mt, mo = benchlib.median(times["torch"]), benchlib.median(times["onnxruntime"])
            params = sum(v.numel() for v in ours.parameters()) / 1e6
            print(f"{kind:<10} {params:6.1f} M params  torch {mt * 1000:8.1f} ms   onnxruntime {mo * 1000:8.1f} ms   "
                  f"outputs agree to {error:.1e} of their range")
            benchlib.ratio(f"DWPose {kind}: torch / onnxruntime time", mt / mo, "goal < 1")


if __name__ == "__main__":
    main()
