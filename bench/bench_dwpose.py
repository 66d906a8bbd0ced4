"""DWPose's two ONNX graphs on torch (onnx2torch plus our graph rewrites, the default backend)
against onnxruntime (the optional accelerator) running the same files with the same number
of CPU threads, in the same process, interleaved, medians; also the graph as onnx2torch
converts it, without our rewrites. Only the network forwards are timed: box decoding,
keypoint decoding and drawing are the same code on both backends.

The published files (yolox_l.onnx, dw-ll_ucoco_384.onnx) cannot be downloaded here, so the
graphs are stand-ins of realistic cost exported with torch.onnx at opset 11 (as the
published files are) from timm's CSPDarknet-53 with SiLU activations (a CSP backbone like
YOLOX-L's and RTMPose-L's, SiLU exported as Sigmoid and Mul as in those files), batch norms
folded, with the published input and output layouts: the detector (1, 3, 640, 640) ->
(1, 8400, 85) from 1 x 1 heads at strides 8/16/32 (YOLOX-L's neck and 3 x 3 head towers are
left out), the estimator (1, 3, 384, 288) -> SimCC x (1, 133, 576) and y (1, 133, 768)
through RTMPose's head (7 x 7 convolution to 133 keypoints, ScaleNorm, Linear, one gated
attention unit with relu-squared attention, the two classifiers). The real backbones differ
in their blocks (CSPNeXt's 5 x 5 depthwise convolutions, channel attention), so the ratios
on the real files may differ.

    .venv/bin/python bench/bench_dwpose.py            # stand-ins of realistic cost, CPU
    .venv/bin/python bench/bench_dwpose.py --smoke    # the tiny test graphs, seconds"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DETECTOR_INPUT, ESTIMATOR_INPUT = (1, 3, 640, 640), (1, 3, 384, 288)
OPSET = 11


def _backbone(out_indices: tuple):
    import timm

    return timm.create_model("cspdarknet53", pretrained=False, features_only=True, out_indices=out_indices,
                             act_layer="silu")


class _Detector(torch.nn.Module):
    """Backbone features at strides 8, 16, 32 -> 85 channels each (4 box, 1 object, 80
    classes), flattened and concatenated to YOLOX's (1, 8400, 85)."""

    def __init__(self):
        super().__init__()
        self.backbone = _backbone((3, 4, 5))
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(c, 85, 1) for c in self.backbone.feature_info.channels())

    def forward(self, x):
        maps = [head(f) for head, f in zip(self.heads, self.backbone(x))]
        return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)


class _ScaleNorm(torch.nn.Module):
    """mmpose's ScaleNorm: x / (|x| / sqrt(dim)) * g."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale, self.g = dim ** -0.5, torch.nn.Parameter(torch.rand(1) + 0.5)

    def forward(self, x):
        return x / (torch.norm(x, dim=-1, keepdim=True) * self.scale).clamp(min=1e-5) * self.g


class _GatedAttention(torch.nn.Module):
    """mmpose's RTMCCBlock as RTMPose's head uses it (self-attention over the 133 keypoint
    tokens, SiLU, relu-squared attention kernel, scaled shortcut)."""

    def __init__(self, dim: int = 256, expansion: int = 512, s: int = 128):
        super().__init__()
        self.e, self.s = expansion, s
        self.norm = _ScaleNorm(dim)
        self.uv = torch.nn.Linear(dim, 2 * expansion + s, bias=False)
        self.gamma, self.beta = torch.nn.Parameter(torch.rand(2, s)), torch.nn.Parameter(torch.rand(2, s) * 0.1)
        self.o = torch.nn.Linear(expansion, dim, bias=False)
        self.res_scale = torch.nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        u, v, base = torch.split(torch.nn.functional.silu(self.uv(self.norm(x))), [self.e, self.e, self.s], dim=-1)
        q, k = torch.unbind(base.unsqueeze(2) * self.gamma + self.beta, dim=2)
        kernel = torch.square(torch.relu(torch.bmm(q, k.transpose(1, 2)) / self.s ** 0.5))
        return x * self.res_scale + self.o(u * torch.bmm(kernel, v))


class _Estimator(torch.nn.Module):
    """Stride-32 features (12 x 9) -> RTMPose's RTMCC head -> SimCC x (576 bins), y (768 bins)."""

    def __init__(self):
        super().__init__()
        self.backbone = _backbone((5,))
        self.keypoints = torch.nn.Conv2d(self.backbone.feature_info.channels()[-1], 133, 7, padding=3)
        self.mlp = torch.nn.Sequential(_ScaleNorm(108), torch.nn.Linear(108, 256, bias=False))
        self.gau = _GatedAttention()
        self.x, self.y = torch.nn.Linear(256, 576, bias=False), torch.nn.Linear(256, 768, bias=False)

    def forward(self, x):
        k = self.gau(self.mlp(self.keypoints(self.backbone(x)[-1]).flatten(2)))
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
                          opset_version=OPSET, dynamo=False)
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
    from onnx2torch import convert

    from lllite_kit.preprocessors.pose.onnx_torch import OnnxModel, OrtModel, read_graph

    # PyTorch maps each tensor over glibc's 32 MB mmap threshold afresh (page faults on every
    # forward at 640 x 640) unless THP_MEM_ALLOC_ENABLE=1 was set before it started
    print(f"machine: {benchlib.machine()}, onnxruntime {ort.__version__} (CPU), "
          f"{torch.get_num_threads()} CPU thread(s) on each side, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    with tempfile.TemporaryDirectory() as tmp:
        if opts.smoke:
            sys.path.insert(0, str(benchlib.REPO / "tests"))
            import tiny_pose

            files = tiny_pose.write_dwpose(Path(tmp))
            print("graphs: the tiny test graphs (smoke)")
        else:
            files = stand_in_files(Path(tmp))
            print(f"graphs: stand-ins (timm CSPDarknet-53 with SiLU; RTMPose's head on the estimator), opset {OPSET}, "
                  "with the published input/output layouts")
        threads = torch.get_num_threads()
        for kind in ("detector", "estimator"):
            ours, theirs = OnnxModel(str(files[kind]), kind).eval(), OrtModel(str(files[kind]), threads)
            converted = convert(read_graph(str(files[kind]), kind)).eval()
            x = torch.rand(*ours.input_shape) * (255 if kind == "detector" else 1)
            with torch.no_grad():
                a, b = ours(x), theirs(x)
            error = max(float((o - t).abs().nan_to_num(0).max() / t.abs().nan_to_num(0).max().clamp(min=1e-12))
                        for o, t in zip(a, b))

            def run(net):
                def forward():
                    with torch.no_grad():
                        net(x)
                return forward

            fns = {"torch": run(ours), "onnxruntime": lambda: theirs(x), "as converted": run(converted)}
            cpu = {fn: [] for fn in fns.values()}

            def measure(fn):
                """Wall time; the process's CPU time too (one thread each side: the work done,
                what other load on a shared machine changes least)."""
                c = time.process_time()
                wall = benchlib.timed(fn)
                cpu[fn].append(time.process_time() - c)
                return wall

            times = benchlib.interleaved(fns, opts.rounds, measure=measure)
            mt, mo, mc = (benchlib.median(times[k]) for k in ("torch", "onnxruntime", "as converted"))
            ct, co = (benchlib.median(cpu[fns[k]]) for k in ("torch", "onnxruntime"))
            params = sum(v.numel() for v in ours.parameters()) / 1e6
            print(f"{kind:<10} {params:6.1f} M params  torch {mt * 1000:8.1f} ms   onnxruntime {mo * 1000:8.1f} ms   "
                  f"(onnx2torch without our rewrites {mc * 1000:8.1f} ms)   "
                  f"CPU time: torch {ct * 1000:8.1f} ms   onnxruntime {co * 1000:8.1f} ms   "
                  f"outputs agree to {error:.1e} of their range")
            benchlib.ratio(f"DWPose {kind}: torch / onnxruntime time", mt / mo, "goal < 1")
            benchlib.ratio(f"DWPose {kind}: torch / onnxruntime CPU time", ct / co, "less sensitive to other load")

if __name__ == "__main__":
    main()
