"""Data-parallel throughput: N processes under torchrun, each with batch B, against one process
with batch N x B - equal work, the same global batches, noise and steps (the equivalence test
shows they end with the same weights). Images per second over the training steps only (from the
job's own progress events, after the first step, so start-up, model loading and latent caching
are not counted). The ratio is N processes' throughput over one process's, each process with
the same resources (one GPU, or --threads_per_process CPU threads): N is perfect scaling, and
ratio / N is the efficiency; what is lost is the engine's distributed path (gradient
all-reduce, agreed stops, the duplicated text encoding and noise draws of the global batch).
On CPU, a machine with fewer than N free cores cannot show N.

    .venv/bin/python bench/bench_distributed.py                  # tiny SD1.5 on CPU, gloo, 2 processes
    .venv/bin/python bench/bench_distributed.py --smoke          # seconds
    .venv/bin/python bench/bench_distributed.py --checkpoint model.safetensors --processes 4 --resolution 1024
                                                                  # a real model on 4 GPUs (nccl) vs 1
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

WORKER = benchlib.REPO / "tests" / "distributed_worker.py"  # train.py with the tiny model


def _dataset(root: Path, images: int, resolution: int, batch: int) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / "imgs"
    folder.mkdir(exist_ok=True)
    for i in range(images):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture {i}", encoding="utf-8")
    toml = root / f"dataset_b{batch}.toml"
    toml.write_text(f'[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = {resolution}\nbatch_size = {batch}\n'
                    '[[datasets.subsets]]\nimage_dir = "imgs"\n', encoding="utf-8")
    return toml


def _config(root: Path, steps: int, mixed: str) -> Path:
    config = root / "config.toml"
    config.write_text(f'network_dim = 16\nnetwork_alpha = 8\nnetwork_train_unet_only = true\nlearning_rate = 1e-4\n'
                      f'max_train_steps = {steps}\nmixed_precision = "{mixed}"\noutput_dir = "{(root / "out").as_posix()}"\n',
                      encoding="utf-8")
    return config


def throughput(root: Path, processes: int, per_process_batch: int, opts) -> float:
    """Training images per second of one job (steps 2..N)."""
    from lllite_kit.training.distributed_launch import TRAIN_SCRIPT, follow_job, torchrun_command
    from lllite_kit.training.engine import TrainHooks

    program = Path(opts.checkpoint and TRAIN_SCRIPT or WORKER)
    args = ["--config_file", str(_config(root, opts.steps, opts.mixed_precision)), "--progress_json",
            "--dataset_config", str(root / f"dataset_b{per_process_batch}.toml"), "--output_name", f"p{processes}"]
    if opts.checkpoint:
        args += ["--pretrained_model_name_or_path", opts.checkpoint]
    times = []
    hooks = TrainHooks(progress=lambda step, total, loss: times.append(time.perf_counter()))
    env = {"COMFYUI_DIR": str(benchlib.COMFYUI_DIR), "OMP_NUM_THREADS": str(opts.threads_per_process), "GLOO_SOCKET_IFNAME": "lo"}
    command = torchrun_command(program, args, processes) if processes > 1 else [sys.executable, str(program), *args]
    follow_job(command, root / f"p{processes}.stop", hooks, env=env)
    if len(times) < 2:
        raise RuntimeError("the job reported fewer than two steps")
    return (len(times) - 1) * processes * per_process_batch / (times[-1] - times[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="per process")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--checkpoint", help="a real checkpoint file: scripts/train.py itself, on GPUs when torch sees them")
    p.add_argument("--mixed_precision", default="no")
    p.add_argument("--threads_per_process", type=int, default=1, help="CPU threads of each process (CPU runs)")
    p.add_argument("--smoke", action="store_true")
    opts = p.parse_args()
    if opts.smoke:
        opts.steps, opts.resolution = 2, 64
    benchlib.bootstrap(cpu=not opts.checkpoint)
    n = opts.processes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = opts.steps * n * opts.batch
        _dataset(root, images, opts.resolution, opts.batch)
        _dataset(root, images, opts.resolution, opts.batch * n)
        one = throughput(root, 1, opts.batch * n, opts)
        many = throughput(root, n, opts.batch, opts)
    print(benchlib.machine())
    print(f"global batch {n * opts.batch}, {opts.steps} steps, {opts.resolution} px; "
          f"1 process: {one:.2f} img/s, {n} processes: {many:.2f} img/s")
    benchlib.ratio(f"throughput {n} processes / 1 process", many / one,
                   f"equal work, same resources per process: {n} is perfect scaling; efficiency {many / one / n:.0%}")


if __name__ == "__main__":
    main()
