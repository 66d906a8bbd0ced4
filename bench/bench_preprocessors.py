"""Preprocessor speed against a baseline in the same process, interleaved A B B A, medians:
Canny (ours: the IMAGE batch in, map batch out; OpenCV per image on CPU, batched torch on
GPU) and standard lineart, XDoG scribble, blur and Otsu threshold (OpenCV per image on CPU,
batched torch on GPU) vs the per-image OpenCV loop users run today (cv2.Canny on the uint8
RGB picture, as A1111 and controlnet_aux call it; the other recipes as the aux packs write
them); Depth Anything V2 (ours) vs transformers' own pipeline for it - its image processor
(Depth-Anything-V2-Small-hf's settings, on the same device), DepthAnythingForDepthEstimation
and post_process_depth_estimation - on the same weights, images and batch chunks, with a
check that both give the same depth map.

    .venv/bin/python bench/bench_preprocessors.py            # CPU (or the GPU torch sees)
    .venv/bin/python bench/bench_preprocessors.py --real-size-depth   # Depth Anything V2 Small at full size
    .venv/bin/python bench/bench_preprocessors.py --smoke    # seconds: 2 small images, tiny depth model

Then each learned detector (HED, PiDiNet, M-LSD, OpenPose body, MiDaS, BAE normals, realistic and
anime lineart) against
controlnet_aux's (pip install controlnet-aux) on the same random weights: per-image
milliseconds, batch 8 at 512 px by default (controlnet_aux takes one picture at a time).

Inputs are synthetic (blurred noise with shapes), 16 images of 1024x1024 unless told
otherwise. Depth uses random weights: speed does not depend on their values."""
import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

# Both depth maps come from the same network on the same pictures. Relative depth is defined
# up to scale and shift, and the two scale at different points (ours to 0..1 before resizing
# back, so bicubic overshoot is clamped; transformers not at all), so transformers' map is
# fitted to ours by a least-squares scale and shift per image, and what is left must stay
# under this mean absolute difference on ours' 0..1 scale. What is left comes from resizing
# to 518 px (ours: area, transformers: antialiased bicubic) and the processor's uint8
# rounding. Pictures are at least 518 px: a smaller map is shrunk back by
# post_process_depth_estimation without antialiasing, which is no reference to compare to.
DEPTH_AGREEMENT = 0.005


def _pictures(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32), (0, 0), 2)
        img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(12):
            x, y = rng.integers(0, size, 2)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(max(2, size // 50), max(3, size // 6))), rng.uniform(0, 255, 3).tolist(), -1)
        out[i] = np.clip(img, 0, 255)
    return out


def compare(name: str, ours, baseline, baseline_name: str, rounds: int) -> None:
    """A B B A rounds after one warm-up of each; prints medians and their ratio."""
    times = benchlib.interleaved({"ours": ours, "baseline": baseline}, rounds)
    ma, mb = benchlib.median(times["ours"]), benchlib.median(times["baseline"])
    print(f"{name:<18} ours {ma * 1000:9.1f} ms   {baseline_name} {mb * 1000:9.1f} ms")
    benchlib.ratio(f"{name}: ours / {baseline_name} time", ma / mb, "goal < 1")


def opencv_lineart(img: np.ndarray) -> np.ndarray:
    """The standard-lineart recipe as the aux packs run it, one image at a time."""
    x = img.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 0.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def opencv_xdog(img: np.ndarray) -> np.ndarray:
    """The XDoG scribble recipe (A1111's scribble_xdog), one image at a time."""
    x = img.astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)).clip(0, 255)
    return ((2 * (255 - dog.astype(np.uint8).astype(np.float32))) > 32).astype(np.uint8) * 255


def opencv_threshold(img: np.ndarray) -> np.ndarray:
    """Otsu binarisation of the grey picture, one image at a time."""
    return cv2.threshold(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def depth_model_folder(root: Path, real_size: bool) -> Path:
    """A transformers folder as published (config, weights, image processor settings of
    Depth-Anything-V2-Small-hf) with random weights, nudged so the depth map varies."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

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
    torch.manual_seed(0)
    net = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # layer scales start at 1 and the head near 0: a flat map would hide differences
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(folder)
    return folder


def transformers_depth(folder: Path, device, chunk: int):
    """transformers' own way to run the model: its image processor on the device, the model
    on batches of `chunk` images, post_process_depth_estimation back to each image's size."""
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    model = DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True).float().eval().to(device)

    def run(pictures: np.ndarray) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(pictures), chunk):
                part = list(pictures[i:i + chunk])
                inputs = processor(images=part, return_tensors="pt", device=device)
                outputs = model(pixel_values=inputs["pixel_values"].to(device))
                maps = processor.post_process_depth_estimation(outputs, target_sizes=[im.shape[:2] for im in part])
                out.append(torch.stack([m["predicted_depth"] for m in maps]).unsqueeze(1).cpu())
        return torch.cat(out)
    return run


def fitted(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """maps * a + b per image, a and b least squares against reference (B, 1, H, W)."""
    x, y = maps.flatten(1).double(), reference.flatten(1).double()
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    a = (xc * yc).sum(1, keepdim=True) / (xc * xc).sum(1, keepdim=True).clamp(min=1e-12)
    return (a * xc + y.mean(1, keepdim=True)).view_as(maps).float()


def compare_depth(pictures: np.ndarray, device, real_size: bool, rounds: int) -> None:
    from lllite_kit.preprocessors.depth_anything import depth_anything, load_depth_anything
    from lllite_kit.preprocessors.models import CHUNK

    frames = torch.from_numpy(pictures).to(device).movedim(-1, 1).float() / 255.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = depth_model_folder(Path(tmp), real_size)
        patcher = load_depth_anything(str(folder))
        baseline = transformers_depth(folder, device, CHUNK)
        ours_map = depth_anything(patcher, frames, 518)
        theirs_map = baseline(pictures)
        times = benchlib.interleaved({"ours": lambda: depth_anything(patcher, frames, 518),
                                      "transformers": lambda: baseline(pictures)}, rounds)
    diff = (ours_map.float().cpu() - fitted(theirs_map, ours_map.float().cpu())).abs()
    n, size = len(pictures), pictures.shape[1]
    kind = "Depth Anything V2 Small (real size, random weights)" if real_size else "Depth Anything V2, tiny test config"
    ours_s, theirs_s = benchlib.median(times["ours"]), benchlib.median(times["transformers"])
    print(f"\n{kind}: {n} images {size}x{size}, detect 518, batches of {CHUNK}, fp32")
    print(f"  ours          {ours_s * 1000:9.1f} ms  ({n / ours_s:.2f} images/s)")
    print(f"  transformers  {theirs_s * 1000:9.1f} ms  ({n / theirs_s:.2f} images/s): DPTImageProcessor on {device.type}, "
          f"DepthAnythingForDepthEstimation, post_process_depth_estimation")
    agree = diff.mean().item() < DEPTH_AGREEMENT
    print(f"  same depth map (transformers' fitted to ours by scale and shift): mean |diff| {diff.mean().item():.4f}, "
          f"max {diff.max().item():.4f} on the 0..1 scale (tolerance: mean < {DEPTH_AGREEMENT}) -> {'agree' if agree else 'DISAGREE'}")
    benchlib.ratio("Depth Anything V2: ours / transformers time", ours_s / theirs_s, "goal < 1")
    if not agree:
        sys.exit("our depth map differs from transformers' beyond the tolerance")


def _reference_detectors(root: Path, device, anime: bool, pose: bool, only: set[str] | None = None):
    """(name, our detector on a batch, controlnet_aux's detector on one uint8 picture) for
    each learned detector both have (those named in `only`, lower case, when given), on one
    set of random weights saved in the published layout (ours reads the file; the reference
    gets the same module)."""
    import functools

    import controlnet_aux as cna
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.lineart_anime import UnetGenerator
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    from controlnet_aux.pidi.model import pidinet

    from lllite_kit.preprocessors import hed, lineart_anime, lineart_realistic, mlsd, pidinet as ours_pidinet

    def want(name):
        return only is None or name.lower() in only

    def saved(net, name, wrap=lambda sd: sd):
        torch.manual_seed(0)
        torch.save(wrap(net.state_dict()), root / name)
        return str(root / name), net.float().eval().to(device)

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if want("HED"):
        path, net = saved(ControlNetHED_Apache2(), "ControlNetHED.pth")
        yield "HED", functools.partial(hed.hed_edges, hed.load_hed(path)), cna.HEDdetector(net)
    if want("PiDiNet"):
        path, net = saved(pidinet(), "table5_pidinet.pth", lambda sd: {"state_dict": sd})
        yield "PiDiNet", functools.partial(ours_pidinet.pidinet_edges, ours_pidinet.load_pidinet(path)), \
            cna.PidiNetDetector(net)
    if want("M-LSD"):
        path, net = saved(MobileV2_MLSD_Large(), "mlsd_large_512_fp32.pth")
        yield "M-LSD", functools.partial(mlsd.mlsd_lines, mlsd.load_mlsd(path)), cna.MLSDdetector(net)
    if pose and want("OpenPose body"):  # the public file has flat layer names (controlnet_aux's transfer() nests them)
        from controlnet_aux.open_pose import Body, OpenposeDetector
        from controlnet_aux.open_pose.model import bodypose_model

        from lllite_kit.preprocessors.pose import openpose

        path, _ = saved(bodypose_model(), "body_pose_model.pth",
                        lambda sd: {k.split(".", 1)[1]: v for k, v in sd.items()})
        yield "OpenPose body", functools.partial(openpose.openpose, openpose.load_openpose(path)), \
            OpenposeDetector(Body(path).to(device))
    if pose and (want("MiDaS DPT-Hybrid") or want("BAE normals")):
        # MiDaS DPT-Hybrid as its original .pt, BAE normals as scannet.pt ({"model": DataParallel names})
        import types

        from controlnet_aux.midas import MidasDetector
        from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel
        from controlnet_aux.normalbae import NormalBaeDetector
        from controlnet_aux.normalbae.nets.NNET import NNET

        from lllite_kit.preprocessors import midas, normal_bae

        if want("MiDaS DPT-Hybrid"):
            path, net = saved(DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True),
                              "dpt_hybrid-midas-501f0c75.pt")
            yield "MiDaS DPT-Hybrid", functools.partial(midas.midas_depth, midas.load_midas(path)), MidasDetector(net)
        if want("BAE normals"):
            bae = NNET(types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                             sampling_ratio=0.4, importance_ratio=0.7))
            path, net = saved(bae, "scannet.pt", lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}})
            yield "BAE normals", functools.partial(normal_bae.normal_bae, normal_bae.load_normal_bae(path)), \
                NormalBaeDetector(net)
    if want("Realistic lineart"):
        path, net = saved(Generator(3, 1, 3), "sk_model.pth")
        yield "Realistic lineart", functools.partial(lineart_realistic.lineart_realistic,
                                                     lineart_realistic.load_lineart(path)), cna.LineartDetector(net, net)
    if not anime or not want("Anime lineart"):
        return
    path, net = saved(UnetGenerator(3, 1, 8, 64, norm_layer=norm), "netG.pth")
    yield "Anime lineart", functools.partial(lineart_anime.lineart_anime, lineart_anime.load_lineart_anime(path)), \
        cna.LineartAnimeDetector(net)


def compare_learned(pictures: np.ndarray, device, rounds: int, only: set[str] | None = None) -> None:
    """Ours on the batch vs controlnet_aux one picture at a time (its API), same weights,
    detection at the pictures' size (a multiple of 64, so neither resizes); `only`: the
    detectors to run (all when None)."""
    try:
        import controlnet_aux  # noqa: F401
    except ImportError:
        print("\nlearned detectors: controlnet_aux is not installed (pip install controlnet-aux): skipped")
        return
    n, size = len(pictures), pictures.shape[1]
    frames = torch.from_numpy(pictures).to(device).movedim(-1, 1).float() / 255.0  # as the nodes pass IMAGE
    print(f"\nlearned detectors vs controlnet_aux: {n} images {size}x{size}, same random weights, fp32; "
          f"per-image ms")
    with tempfile.TemporaryDirectory() as tmp:
        if size % 256:
            print(f"{'Anime lineart':<18} skipped: the picture side must be a multiple of 256 (its working multiple)")
        # OpenPose (random body weights light up peaks everywhere, and grouping them takes seconds),
        # MiDaS and BAE (100-300 M parameters to build): not at smoke size
        for name, ours, reference in _reference_detectors(Path(tmp), device, anime=size % 256 == 0, pose=size >= 256,
                                                          only=only):
            times = benchlib.interleaved(
                {"ours": lambda: ours(frames, detect_resolution=size),
                 "reference": lambda: [reference(p, detect_resolution=size, image_resolution=size, output_type="np")
                                       for p in pictures]}, rounds)
            ma, mb = benchlib.median(times["ours"]) / n, benchlib.median(times["reference"]) / n
            print(f"{name:<18} ours {ma * 1000:9.1f} ms   controlnet_aux {mb * 1000:9.1f} ms")
            benchlib.ratio(f"{name}: ours / controlnet_aux time", ma / mb, "goal <= 1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3, help="A B B A rounds per classical comparison")
    p.add_argument("--depth-rounds", type=int, default=1, help="A B B A rounds for depth")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--real-size-depth", action="store_true", help="Depth Anything V2 Small at its real size (24.8 M params)")
    p.add_argument("--depth-images", type=int, default=None, help="images for the depth run (default: --images)")
    p.add_argument("--learned-images", type=int, default=8, help="batch for the learned detectors vs controlnet_aux")
    p.add_argument("--learned-size", type=int, default=512, help="their picture side (a multiple of 64; 256 for anime lineart)")
    p.add_argument("--learned-rounds", type=int, default=1, help="A B B A rounds per learned detector")
    p.add_argument("--only-learned", metavar="NAME[,NAME]", type=lambda s: {n.strip().lower() for n in s.split(",")},
                   help="run only these learned detectors (e.g. 'BAE normals,HED'), skipping the classical and depth parts")
    p.add_argument("--smoke", action="store_true", help="smallest settings: 2 images of 560x560, one round (a few seconds)")
    opts = p.parse_args()
    if opts.size < 518:
        sys.exit("--size must be at least 518 (Depth Anything's detection size; see DEPTH_AGREEMENT)")
    if opts.smoke:
        opts.images, opts.size, opts.rounds, opts.depth_rounds = 2, 560, 1, 1
        opts.learned_images, opts.learned_size = 1, 64
        benchlib.smoke_threads()
    benchlib.bootstrap(cpu=opts.cpu)
    import comfy.model_management as mm

    from lllite_kit.preprocessors.canny import canny
    from lllite_kit.preprocessors.blur_tile import blur_guide
    from lllite_kit.preprocessors.lineart_standard import lineart_standard
    from lllite_kit.preprocessors.scribble import scribble_xdog
    from lllite_kit.preprocessors.threshold import binary_threshold

    device = mm.get_torch_device()
    print(f"machine: {benchlib.machine()}, OpenCV {cv2.__version__}, device {device}")
    if opts.only_learned:
        compare_learned(_pictures(opts.learned_images, opts.learned_size), device, opts.learned_rounds, opts.only_learned)
        return
    pictures = _pictures(opts.images, opts.size)
    batch = torch.from_numpy(pictures).to(device).movedim(-1, 1).float() / 255.0
    print(f"batch: {opts.images} x {opts.size}x{opts.size} RGB; ours runs the whole batch at once on {device.type}, "
          f"OpenCV one image at a time\n")

    compare("Canny 100/200", lambda: canny(batch, 100, 200),
            lambda: [cv2.Canny(im, 100, 200) for im in pictures], "OpenCV loop", opts.rounds)
    compare("Standard lineart", lambda: lineart_standard(batch, 6.0, 8),
            lambda: [opencv_lineart(im) for im in pictures], "OpenCV loop", opts.rounds)
    compare("XDoG scribble", lambda: scribble_xdog(batch, 32),
            lambda: [opencv_xdog(im) for im in pictures], "OpenCV loop", opts.rounds)
    compare("Blur sigma 5", lambda: blur_guide(batch, 5.0),
            lambda: [cv2.GaussianBlur(im, (0, 0), 5.0) for im in pictures], "OpenCV loop", opts.rounds)
    compare("Otsu threshold", lambda: binary_threshold(batch, 0),
            lambda: [opencv_threshold(im) for im in pictures], "OpenCV loop", opts.rounds)

    n = opts.depth_images or opts.images
    compare_depth(pictures[np.arange(n) % len(pictures)], device, opts.real_size_depth, opts.depth_rounds)
    compare_learned(_pictures(opts.learned_images, opts.learned_size), device, opts.learned_rounds)


if __name__ == "__main__":
    main()
