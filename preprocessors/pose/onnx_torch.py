"""Running the published DWPose ONNX graphs on torch, without onnxruntime.

The graph is read with the `onnx` package (protobuf: no code runs when a file is read) and
converted by onnx2torch, a maintained ONNX-to-PyTorch converter, into a torch.fx module
whose parameters are the graph's initializers. We use a converter rather than a
hand-written YOLOX/RTMPose because the files are what users have: the graph says exactly
what to compute, so any export of these networks runs as exported. The converted graph is
rewritten for speed where that provably computes the same (see .onnx_rewrites): SiLU fused
everywhere, and for float32 CPU inference a copy with packed oneDNN convolutions, built on
first use and rebuilt when the weights move or change. onnxruntime, when installed, can run
the same file instead (optional accelerator)."""
import importlib.util
import os

import torch

from ..weights import WrongWeightLayout
from .onnx_rewrites import cpu_graph, cpu_inference_available, fuse_silu


def read_graph(path: str, architecture: str):
    """The file's ONNX graph, as onnx2torch reads it: trailing optional inputs named ""
    (how exporters skip one, e.g. Clip's max after its min) mean the same as leaving them
    off, the only form onnx2torch accepts, so they are dropped."""
    import onnx

    try:
        graph = onnx.load(path)
    except Exception as e:
        raise WrongWeightLayout(f"{os.path.basename(path)} could not be read as an ONNX graph "
                                f"({architecture}): {e}") from e
    for node in graph.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
    return graph


class OnnxModel(torch.nn.Module):
    """One ONNX graph as a torch module; remembers its input size (N, C, H, W)."""

    def __init__(self, path: str, architecture: str):
        super().__init__()
        from onnx2torch import convert

        graph = read_graph(path, architecture)
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value or 1 for d in dims)
        try:
            self.net = convert(graph)
        except Exception as e:
            raise WrongWeightLayout(f"{os.path.basename(path)}: its graph could not be converted to torch "
                                    f"({architecture}): {e}") from e
        fuse_silu(self.net)
        self.batches = None  # unknown until run_batched has checked it on a real batch
        self._cpu = (None, None)  # (weights' fingerprint, cpu_graph(self.net)); a tuple, so not a submodule

    def cpu_net(self) -> torch.nn.Module:
        """The graph float32 CPU inference runs: cpu_graph(self.net), rebuilt when the weights change."""
        params = list(self.net.parameters())
        key = tuple((p.device, p.dtype, p.data_ptr(), 0 if p.is_inference() else p._version) for p in params)
        if self._cpu[0] != key:
            self._cpu = (None, None)  # drop the old packed weights before packing new ones
            self._cpu = (key, cpu_graph(self.net))
        return self._cpu[1]

    def _apply(self, fn, *args, **kwargs):
        self._cpu = (None, None)  # moved or cast: the packed copy is stale, and its memory is freed
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor):
        fast = x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() \
            and cpu_inference_available()
        out = (self.cpu_net() if fast else self.net)(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


class OrtModel:
    """The same graph on onnxruntime (CPU, or CUDA when that build is installed); threads:
    its CPU threads (default: onnxruntime's, one per core)."""

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(path, options, providers=providers)
        shape = self.session.get_inputs()[0].shape
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in shape)
        self.batches = None if not isinstance(shape[0], int) else False  # onnxruntime enforces a fixed one

    def __call__(self, x: torch.Tensor):
        name = self.session.get_inputs()[0].name
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {name: x.cpu().numpy()}))


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _batches(model, one: torch.Tensor) -> bool:
    """Whether the graph gives an input (1, C, H, W) the same outputs in a batch of two as
    alone, to 1 % of their range: kernels differ by far less (float32, or the TF32 that
    GPU convolutions use by default); a reshape that mixes the inputs, by the order of the
    range. The second input is the first mirrored, so it surely differs (two crops of a
    video's frames might not)."""
    try:
        together = model(torch.cat([one, one.flip(-1)]))
    except Exception:  # a shape fixed at batch 1 that the runtime checks (each has its own error type)
        return False
    alone = model(one)
    return len(together) == len(alone) and all(
        t.shape[0] == 2 and t.shape[1:] == a.shape[1:] and bool((t[:1] - a).abs().max() <= 1e-2 * a.abs().max().clamp(min=1e-12))
        for t, a in zip(together, alone))


def run_batched(model, x: torch.Tensor, most: int = 8) -> tuple:
    """The graph on N inputs (N, C, H, W), up to `most` per run where the graph gives each
    input what it gives it alone, else one by one. Exports are made for batch 1 and some
    write that 1 into a reshape, which torch would not refuse but would mix the inputs: so
    a converted graph is checked once (_batches) before its first batch. One run of several
    inputs costs less per input (the small late layers and the Python between layers are
    shared): pictures with several people gain."""
    if x.shape[0] > 1 and getattr(model, "batches", False) is None:
        model.batches = _batches(model, x[:1])
    step = most if getattr(model, "batches", False) else 1
    runs = [model(x[i:i + step]) for i in range(0, x.shape[0], step)]
    return tuple(torch.cat(parts) for parts in zip(*runs))
