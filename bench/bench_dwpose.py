"""DWPose's two ONNX graphs on torch (onnx2torch plus our graph rewrites, the default backend)
against onnxruntime (the optional accelerator) running the same files with the same number
of CPU threads, and the graph as onnx2torch converts it, without our rewrites. Each side
runs in its own processes, in rounds of A B C C B A: in one process each library's idle
worker threads spin after a call and take a core from the other. Only the network forwards
are timed (medians): box decoding, keypoint decoding and drawing are the same code on both
backends. A picture costs one detector forward and one estimator crop per person; the node
gives all the crops to `run_batched`, which runs them together where the file allows (the
torch graph checks that each crop gets its own answer; onnxruntime refuses a batch its file
fixes at 1) and else one by one. So the estimator is also timed on 2 and 4 crops through
`run_batched` on each side, and the per-picture ratios add those to the detector's time.
Each side's peak resident memory for loading and running both graphs is printed too.

The published files (yolox_l.onnx, dw-ll_ucoco_384.onnx) cannot be downloaded here, so the
graphs are stand-ins exported with torch.onnx at opset 11 (as the published files are) from
the published architectures, written out here with random weights and batch norms folded:
YOLOX-L (Focus stem, CSPDarknet with 3/9/9/3 bottlenecks and SPP, PAFPN, decoupled heads;
(1, 3, 640, 640) -> (1, 8400, 85)) and RTMPose-L (CSPNeXt-L: 3 x 3 convolution, 5 x 5
depthwise and 1 x 1 per block, channel attention, SPP; RTMCC head: 7 x 7 convolution to 133
keypoints, ScaleNorm, Linear, a gated attention unit, SimCC classifiers; (1, 3, 384, 288)
-> x (1, 133, 576), y (1, 133, 768)). SiLU is exported as Sigmoid and Mul, as in those files.
Layer for layer the cost is the published networks'; what an exporter adds around them
(mmdeploy's extra nodes) is not modelled.

    .venv/bin/python bench/bench_dwpose.py            # stand-ins of realistic cost, CPU (about 3 min)
    .venv/bin/python bench/bench_dwpose.py --smoke    # the tiny test graphs, each side once in this process"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DETECTOR_INPUT, ESTIMATOR_INPUT = (1, 3, 640, 640), (1, 3, 384, 288)
OPSET = 11


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> torch.nn.Sequential:
    """Convolution, batch norm (folded at export), SiLU: YOLOX's BaseConv, mmcv's ConvModule."""
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               torch.nn.BatchNorm2d(cout), torch.nn.SiLU())


class _CSPLayer(torch.nn.Module):
    """YOLOX's CSPLayer (bottleneck: 1 x 1, 3 x 3) or, with cspnext, mmdet's CSPNeXt layer
    (block: 3 x 3, depthwise 5 x 5, pointwise 1 x 1; channel attention before the last conv)."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool, cspnext: bool = False):
        super().__init__()
        mid = cout // 2
        self.main, self.short, self.final = _conv(cin, mid), _conv(cin, mid), _conv(2 * mid, cout)
        block = (lambda: torch.nn.Sequential(_conv(mid, mid, 3), _conv(mid, mid, 5, groups=mid), _conv(mid, mid))) \
            if cspnext else (lambda: torch.nn.Sequential(_conv(mid, mid), _conv(mid, mid, 3)))
        self.blocks, self.shortcut = torch.nn.ModuleList(block() for _ in range(n)), shortcut
        self.attention = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(2 * mid, 2 * mid, 1),
                                             torch.nn.Hardsigmoid()) if cspnext else None

    def forward(self, x):
        y = self.main(x)
        for b in self.blocks:
            y = y + b(y) if self.shortcut else b(y)
        y = torch.cat([y, self.short(x)], 1)
        return self.final(y * self.attention(y) if self.attention is not None else y)


class _SPP(torch.nn.Module):
    """SPP bottleneck (YOLOX: max pools 5, 9, 13 side by side; CSPNeXt: the same)."""

    def __init__(self, c: int):
        super().__init__()
        self.reduce, self.expand = _conv(c, c // 2), _conv(c // 2 * 4, c)
        self.pools = torch.nn.ModuleList(torch.nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

    def forward(self, x):
        x = self.reduce(x)
        return self.expand(torch.cat([x] + [p(x) for p in self.pools], 1))


def _stage(cin: int, cout: int, n: int, shortcut: bool = True, spp: bool = False, cspnext: bool = False):
    return torch.nn.Sequential(_conv(cin, cout, 3, 2), *([_SPP(cout)] if spp else []),
                               _CSPLayer(cout, cout, n, shortcut, cspnext))


class _Detector(torch.nn.Module):
    """YOLOX-L (depth 1.0, width 1.0): Focus stem, CSPDarknet (3, 9, 9, 3 blocks; SPP),
    PAFPN, decoupled heads at strides 8/16/32 -> (1, 8400, 85) = box, objectness, 80 classes."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(12, 64, 3)
        self.dark = torch.nn.ModuleList([_stage(64, 128, 3), _stage(128, 256, 9), _stage(256, 512, 9),
                                         _stage(512, 1024, 3, shortcut=False, spp=True)])
        self.lateral0, self.c3_p4 = _conv(1024, 512), _CSPLayer(1024, 512, 3, False)
        self.reduce1, self.c3_p3 = _conv(512, 256), _CSPLayer(512, 256, 3, False)
        self.down2, self.c3_n3 = _conv(256, 256, 3, 2), _CSPLayer(512, 512, 3, False)
        self.down1, self.c3_n4 = _conv(512, 512, 3, 2), _CSPLayer(1024, 1024, 3, False)
        self.stems = torch.nn.ModuleList(_conv(c, 256) for c in (256, 512, 1024))
        self.cls = torch.nn.ModuleList(torch.nn.Sequential(_conv(256, 256, 3), _conv(256, 256, 3)) for _ in range(3))
        self.reg = torch.nn.ModuleList(torch.nn.Sequential(_conv(256, 256, 3), _conv(256, 256, 3)) for _ in range(3))
        self.cls_pred = torch.nn.ModuleList(torch.nn.Conv2d(256, 80, 1) for _ in range(3))
        self.reg_pred = torch.nn.ModuleList(torch.nn.Conv2d(256, 4, 1) for _ in range(3))
        self.obj_pred = torch.nn.ModuleList(torch.nn.Conv2d(256, 1, 1) for _ in range(3))

    def forward(self, x):
        x = self.stem(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))
        x = self.dark[0](x)
        c3 = self.dark[1](x)
        c4 = self.dark[2](c3)
        c5 = self.dark[3](c4)
        up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
        p5 = self.lateral0(c5)
        p4 = self.reduce1(self.c3_p4(torch.cat([up(p5), c4], 1)))
        out8 = self.c3_p3(torch.cat([up(p4), c3], 1))
        out16 = self.c3_n3(torch.cat([self.down2(out8), p4], 1))
        out32 = self.c3_n4(torch.cat([self.down1(out16), p5], 1))
        maps = []
        for i, f in enumerate((out8, out16, out32)):
            f = self.stems[i](f)
            c, r = self.cls[i](f), self.reg[i](f)
            maps.append(torch.cat([self.reg_pred[i](r), self.obj_pred[i](r).sigmoid(), self.cls_pred[i](c).sigmoid()], 1))
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
    """RTMPose-L: CSPNeXt-L (stem of three 3 x 3 convolutions; 3, 6, 6, 3 blocks; SPP) to
    stride-32 features (12 x 9) -> RTMPose's RTMCC head -> SimCC x (576 bins), y (768 bins)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(
            _conv(3, 32, 3, 2), _conv(32, 32, 3), _conv(32, 64, 3),
            _stage(64, 128, 3, cspnext=True), _stage(128, 256, 6, cspnext=True), _stage(256, 512, 6, cspnext=True),
            _stage(512, 1024, 3, shortcut=False, spp=True, cspnext=True))
        self.keypoints = torch.nn.Conv2d(1024, 133, 7, padding=3)
        self.mlp = torch.nn.Sequential(_ScaleNorm(108), torch.nn.Linear(108, 256, bias=False))
        self.gau = _GatedAttention()
        self.x, self.y = torch.nn.Linear(256, 576, bias=False), torch.nn.Linear(256, 768, bias=False)

    def forward(self, x):
        k = self.gau(self.mlp(self.keypoints(self.backbone(x)).flatten(2)))
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


SIDES = ("torch", "onnxruntime", "as converted")
CROPS = (1, 2, 4)  # estimator crops per picture (people); the detector runs once per picture


def _load(side: str, path: str, kind: str):
    from onnx2torch import convert

    from lllite_kit.preprocessors.pose.onnx_torch import OnnxModel, OrtModel, read_graph

    if side == "torch":
        return OnnxModel(path, kind).eval()
    if side == "onnxruntime":
        return OrtModel(path, torch.get_num_threads())
    return convert(read_graph(path, kind)).eval()


def _side_worker(opts) -> dict:
    """One side's forwards, the detector's and the estimator's on 1, 2 and 4 crops (through
    run_batched, after its untimed one check per model), `--reps` times each in turn: wall
    and process CPU time, and the peak resident memory this side added by loading and running."""
    from lllite_kit.preprocessors.pose.onnx_torch import run_batched

    side, runs, cpu = opts.variant, {}, {}
    with benchlib.Peak() as peak:
        calls = {}
        for kind in ("detector", "estimator"):
            net = _load(side, opts.files[kind], kind)
            shape = _input_shape(opts.files[kind])
            for n in (1,) if kind == "detector" or side == "as converted" else CROPS:
                x = torch.rand(n, *shape[1:]) * (255 if kind == "detector" else 1)
                forward = (lambda net=net, x=x: run_batched(net, x)) if n > 1 else (lambda net=net, x=x: net(x))
                calls[f"{kind} {n}"] = forward
        with torch.no_grad():
            for forward in calls.values():  # warm-up, run_batched's check
                forward()
            for _ in range(opts.reps):
                for name, forward in calls.items():
                    c = time.process_time()
                    runs.setdefault(name, []).append(benchlib.timed(forward))
                    cpu.setdefault(name, []).append(time.process_time() - c)
    return {"times": runs["detector 1"], "peak": peak.bytes, "runs": runs, "cpu": cpu}


def _input_shape(path: str) -> tuple:
    from lllite_kit.preprocessors.pose.onnx_torch import read_graph

    dims = read_graph(path, "input shape").graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value or 1 for d in dims)


def _agreement(files: dict) -> dict:
    """Largest difference between the torch graph's and onnxruntime's outputs, relative to
    their range, one forward each (untimed, in this process)."""
    out = {}
    for kind, path in files.items():
        ours, theirs = _load("torch", path, kind), _load("onnxruntime", path, kind)
        x = torch.rand(*_input_shape(path)) * (255 if kind == "detector" else 1)
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        out[kind] = max(float((o - t).abs().nan_to_num(0).max() / t.abs().nan_to_num(0).max().clamp(min=1e-12))
                        for o, t in zip(a, b))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="A B C C B A rounds of one process per side")
    p.add_argument("--reps", type=int, default=3, help="timed forwards of each kind per process")
    p.add_argument("--smoke", action="store_true", help="the tiny test graphs, each side once in this process")
    p.add_argument("--variant", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.smoke:
        opts.rounds, opts.reps = 1, 1
        benchlib.smoke_threads()
    benchlib.bootstrap(cpu=True)
    if opts.variant:  # a worker process
        opts.files = dict(zip(("detector", "estimator"), opts.files.split(",")))
        benchlib.print_result(_side_worker(opts))
        return
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("onnxruntime is not installed (pip install onnxruntime): nothing to compare against")

    print(f"machine: {benchlib.machine()}, onnxruntime {ort.__version__} (CPU), "
          f"{torch.get_num_threads()} CPU thread(s) on each side")
    with tempfile.TemporaryDirectory() as tmp:
        if opts.smoke:
            sys.path.insert(0, str(benchlib.REPO / "tests"))
            import tiny_pose

            files = tiny_pose.write_dwpose(Path(tmp))
            print("graphs: the tiny test graphs (smoke)")
        else:
            files = stand_in_files(Path(tmp))
            print(f"graphs: stand-ins (YOLOX-L, RTMPose-L with random weights), opset {OPSET}, "
                  "with the published input/output layouts")
        opts.files = {k: str(v) for k, v in files.items()}
        agree = _agreement(opts.files)
        cmd = [sys.executable, __file__, "--reps", str(opts.reps), "--files",
               ",".join(opts.files[k] for k in ("detector", "estimator"))]
        print("each side in its own processes (median detector forward, peak memory added):")
        results = benchlib.run_variants(cmd, list(SIDES), opts.rounds, _side_worker, opts, separate=not opts.smoke)
    wall = {side: {name: benchlib.median([t for r in rs for t in r["runs"][name]]) for name in rs[0]["runs"]}
            for side, rs in results.items()}
    cpu = {side: {name: benchlib.median([t for r in rs for t in r["cpu"][name]]) for name in rs[0]["cpu"]}
           for side, rs in results.items()}
    peak = {side: benchlib.median([r["peak"] for r in rs]) for side, rs in results.items()}
    ours, theirs, plain = wall["torch"], wall["onnxruntime"], wall["as converted"]
    for kind in ("detector", "estimator"):
        name = f"{kind} 1"
        print(f"{kind:<10} torch {ours[name] * 1000:8.1f} ms   onnxruntime {theirs[name] * 1000:8.1f} ms   "
              f"(onnx2torch without our rewrites {plain[name] * 1000:8.1f} ms)   CPU time: torch "
              f"{cpu['torch'][name] * 1000:8.1f} ms   onnxruntime {cpu['onnxruntime'][name] * 1000:8.1f} ms   "
              f"outputs agree to {agree[kind]:.1e} of their range")
        benchlib.ratio(f"DWPose {kind}: torch / onnxruntime time", ours[name] / theirs[name], "goal < 1")
        benchlib.ratio(f"DWPose {kind}: torch / onnxruntime CPU time",
                       cpu["torch"][name] / cpu["onnxruntime"][name], "less sensitive to other load")
    for n in CROPS[1:]:
        print(f"estimator  {n} crops: torch {ours[f'estimator {n}'] * 1000:8.1f} ms (run_batched)   "
              f"onnxruntime {theirs[f'estimator {n}'] * 1000:8.1f} ms (run_batched)")
    print(f"peak memory added by loading and running both graphs: torch {peak['torch'] / 2**20:.0f} MiB, "
          f"onnxruntime {peak['onnxruntime'] / 2**20:.0f} MiB, as converted {peak['as converted'] / 2**20:.0f} MiB")
    for people in CROPS:
        t, o = (side["detector 1"] + side[f"estimator {people}"] for side in (ours, theirs))
        benchlib.ratio(f"DWPose per picture with {people} person(s): torch / onnxruntime time", t / o, "goal < 1")


if __name__ == "__main__":
    main()
