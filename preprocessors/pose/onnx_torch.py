"""Running the published DWPose ONNX graphs on torch, without onnxruntime.

The graph is read with the `onnx` package (protobuf: no code runs when a file is read) and
converted by onnx2torch, a maintained ONNX-to-PyTorch converter, into a torch.fx module
whose parameters are the graph's initializers. We use a converter rather than a
hand-written YOLOX/RTMPose because the files are what users have: the graph says exactly
what to compute, so any export of these networks runs as exported. onnxruntime, when
installed, can run the same file instead (optional accelerator)."""
import importlib.util
import os

import torch

from ..weights import WrongWeightLayout


class OnnxModel(torch.nn.Module):
    """One ONNX graph as a torch module; remembers its input size (N, C, H, W)."""

    def __init__(self, path: str, architecture: str):
        super().__init__()
        import onnx
        from onnx2torch import convert

        try:
            graph = onnx.load(path)
        except Exception as e:
            raise WrongWeightLayout(f"{os.path.basename(path)} could not be read as an ONNX graph "
                                    f"({architecture}): {e}") from e
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value or 1 for d in dims)
        try:
            self.net = convert(graph)
        except Exception as e:
            raise WrongWeightLayout(f"{os.path.basename(path)}: its graph could not be converted to torch "
                                    f"({architecture}): {e}") from e

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


class OrtModel:
    """The same graph on onnxruntime (CPU, or CUDA when that build is installed)."""

    def __init__(self, path: str):
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(path, providers=providers)
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in self.session.get_inputs()[0].shape)

    def __call__(self, x: torch.Tensor):
        name = self.session.get_inputs()[0].name
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {name: x.cpu().numpy()}))


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None
