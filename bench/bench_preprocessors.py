"""Preprocessor speed: our batched torch maps vs the per-image OpenCV loop users run today,
measured in the same process, interleaved A B B A, medians; then depth images/s.

    .venv/bin/python bench/bench_preprocessors.py            # CPU (or the GPU torch sees)
    .venv/bin/python bench/bench_preprocessors.py --real-size-depth   # Depth Anything V2 Small at full size

Inputs are synthetic (blurred noise with shapes), 16 images of 1024x1024 unless told
otherwise. Depth uses random weights: speed does not depend on their values."""
import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
sys.path[:0] = [str(COMFYUI_DIR)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from comfy.cli_args import args  # noqa: E402


def _import_pack():
    spec = importlib.util.spec_from_file_location("lllite_kit", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lllite_kit"] = module
    spec.loader.exec_module(module)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pictures(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32), (0, 0), 2)
        img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(12):
            x, y = rng.integers(0, size, 2)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(20, size // 6)), rng.uniform(0, 255, 3).tolist(), -1)
        out[i] = np.clip(img, 0, 255)
    return out


def _time(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def compare(name: str, ours, baseline, sync, rounds: int) -> None:
    """ABBA rounds after one warm-up of each; prints medians and the speed-up."""
    ours(), baseline()
    a, b = [], []
    for _ in range(rounds):
        a.append(_time(ours, sync))
        b.append(_time(baseline, sync))
        b.append(_time(baseline, sync))
        a.append(_time(ours, sync))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:<18} ours {ma * 1000:9.1f} ms   OpenCV loop {mb * 1000:9.1f} ms   speed-up x{mb / ma:5.2f}")


def opencv_lineart(img: np.ndarray) -> np.ndarray:
    """The standard-lineart recipe as the aux packs run it, one image at a time."""
    x = img.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 0.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def depth_model_folder(root: Path, real_size: bool) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if real_size:  # Depth Anything V2 Small: ViT-S/14 (384 wide, 12 layers, 6 heads), DPT head 64
        backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                                patch_size=14, out_indices=[3, 6, 9, 12], apply_layernorm=True, reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, patch_size=14,
                                     neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64)
    else:
        backbone = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=1, mlp_ratio=2, image_size=56,
                                patch_size=14, out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=64, patch_size=14,
                                     neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8)
    folder = root / ("Depth-Anything-V2-Small-hf" if real_size else "depth-anything-tiny")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3, help="ABBA rounds per comparison")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--real-size-depth", action="store_true", help="Depth Anything V2 Small at its real size (24.8 M params)")
    p.add_argument("--depth-images", type=int, default=None, help="images for the depth run (default: --images)")
    opts = p.parse_args()
    args.cpu = opts.cpu or not torch.cuda.is_available()
    import comfy.model_management as mm

    _import_pack()
    from lllite_kit.preprocessors.canny import canny
    from lllite_kit.preprocessors.depth_anything import depth_anything, load_depth_anything
    from lllite_kit.preprocessors.lineart_standard import lineart_standard

    device = mm.get_torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"CPU: {_cpu_model()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    pictures = _pictures(opts.images, opts.size)
    batch = torch.from_numpy(pictures).to(device).movedim(-1, 1).float() / 255.0
    print(f"batch: {opts.images} x {opts.size}x{opts.size} RGB; ours runs the whole batch at once on {device.type}, "
          f"OpenCV one image at a time\n")

    compare("Canny 100/200", lambda: canny(batch, 100, 200),
            lambda: [cv2.Canny(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), 100, 200) for im in pictures], sync, opts.rounds)
    compare("Standard lineart", lambda: lineart_standard(batch, 6.0, 8),
            lambda: [opencv_lineart(im) for im in pictures], sync, opts.rounds)

    n = opts.depth_images or opts.images
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        patcher = load_depth_anything(str(depth_model_folder(Path(tmp), opts.real_size_depth)))
        frames = batch[:n] if n <= batch.shape[0] else batch[:1].expand(n, -1, -1, -1)
        depth_anything(patcher, frames[:1], 518)  # load onto the device, warm up
        seconds = statistics.median(_time(lambda: depth_anything(patcher, frames, 518), sync) for _ in range(2))
    kind = "Depth Anything V2 Small (real size, random weights)" if opts.real_size_depth else "Depth Anything V2, tiny test config"
    print(f"\n{kind}: {n} images {opts.size}x{opts.size}, detect 518 -> {n / seconds:.2f} images/s "
          f"({seconds * 1000 / n:.0f} ms per image)")


if __name__ == "__main__":
    main()
