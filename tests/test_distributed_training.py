"""Data-parallel training under torchrun on CPU (gloo): two processes with batch 1 end with the
weights of one process with batch 2, a resumed two-process run equals the uninterrupted one,
another process count resumes too, and a stop reaches every process at the same step."""
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
from PIL import Image

from conftest import COMFYUI_DIR, REPO
from graph_runner import GraphError

WORKER = REPO / "tests" / "distributed_worker.py"
IMAGES = 5  # global batches of 2: 2, 2, 1 (the last leaves the second process nothing)


def _dataset(root, batch_size: int):
    folder = root / "imgs"
    folder.mkdir(exist_ok=True)
    for i in range(IMAGES):
        y, x = np.mgrid[0:64, 0:64]
        pixels = np.stack([(x * (3 + i)) % 256, (y * (5 + i)) % 256, (x + y) * i % 256], -1).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks thing, pose {i}", encoding="utf-8")
    toml = root / f"dataset_b{batch_size}.toml"
    toml.write_text('[general]\ncaption_extension = ".txt"\nflip_aug = true\n[[datasets]]\nresolution = 64\n'
                    f'batch_size = {batch_size}\n[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeats = 1\n', encoding="utf-8")
    return toml


def _config(root, out):
    config = root / "config.toml"
    config.write_text(f"""
[network_arguments]
network_dim = 4
network_alpha = 4
network_train_unet_only = true
[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-3
lr_scheduler = "cosine"
[training_arguments]
output_dir = "{out.as_posix()}"
max_train_steps = 4
save_every_n_steps = 2
save_state = true
save_last_n_steps = 10
save_precision = "float"
mixed_precision = "no"
""", encoding="utf-8")
    return config


def _start(args, processes: int) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    env = {"COMFYUI_DIR": str(COMFYUI_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*launcher, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _together(*runs: tuple[list, int], timeout=600) -> list[subprocess.CompletedProcess]:
    """Independent runs at once: each is mostly single-threaded start-up (torch, ComfyUI)."""
    procs = [_start(args, processes) for args, processes in runs]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _largest_difference(a_file, b_file) -> float:
    a, b = safetensors.torch.load_file(a_file), safetensors.torch.load_file(b_file)
    assert a.keys() == b.keys() and a
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_data_parallel_equals_one_process_and_resumes(tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path, out)
    common = ["--config_file", str(config), "--seed", "7"]
    one, two = _together(([*common, "--dataset_config", str(_dataset(tmp_path, 2)), "--output_name", "one"], 1),
                         ([*common, "--dataset_config", str(_dataset(tmp_path, 1)), "--output_name", "two"], 2))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("train: saved") == 1  # process 0 alone reports and writes

    # the same global batches, noise and timesteps: equal up to float summation order
    diff = _largest_difference(out / "one.safetensors", out / "two.safetensors")
    print(f"largest weight difference, 2 processes x batch 1 vs 1 process x batch 2: {diff:.3g}")
    assert diff < 1e-5
    ups = safetensors.torch.load_file(out / "two.safetensors")
    assert max(v.abs().max().item() for k, v in ups.items() if k.endswith("lora_up.weight")) > 1e-3  # it trained

    # a resumed two-process run ends where the uninterrupted one did; and one process continues a
    # two-process run (its own output name): same step count, the epoch from the same fraction
    state = out / "two-step00000002-state.pt"
    assert state.is_file()
    resumed, single = _together(
        ([*common, "--dataset_config", str(_dataset(tmp_path, 1)), "--output_name", "two", "--resume", str(state)], 2),
        ([*common, "--dataset_config", str(_dataset(tmp_path, 1)), "--output_name", "single", "--resume", str(state)], 1))
    assert resumed.returncode == 0, resumed.stderr
    # (the resumed run overwrote two.safetensors with its own final file: compare with the one-process run)
    assert _largest_difference(out / "one.safetensors", out / "two.safetensors") < 1e-5

    assert single.returncode == 0, single.stderr
    assert "resuming a 2-process run with 1 processes" in single.stdout + single.stderr
    assert "step 4/4" in single.stdout


@pytest.mark.slow
def test_the_launcher_streams_progress_and_a_cancel_stops_every_process(tmp_path):
    """The TrainDistributed node's path: phases and steps stream into the hooks; a Cancel after
    step 1 makes every process stop at the same step and re-raises here."""
    from lllite_kit.training.distributed_launch import follow_job, torchrun_command
    from lllite_kit.training.engine import TrainHooks

    class Cancelled(Exception):
        pass

    events = []

    def check_interrupt():
        if any(kind == "step" for kind, _ in events):
            raise Cancelled()

    hooks = TrainHooks(progress=lambda step, total, loss: events.append(("step", (step, total))),
                       phase=lambda text: events.append(("phase", text)), check_interrupt=check_interrupt)
    out = tmp_path / "out"
    args = ["--config_file", str(_config(tmp_path, out)), "--dataset_config", str(_dataset(tmp_path, 1)),
            "--output_name", "cancelled", "--progress_json", "--stop_file", str(tmp_path / "stop")]
    env = {"COMFYUI_DIR": str(COMFYUI_DIR), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    with pytest.raises(Cancelled):
        follow_job(torchrun_command(WORKER, args, 2), tmp_path / "stop", hooks, env=env)
    steps = [v for kind, v in events if kind == "step"]
    assert steps[0] == (1, 4) and len(steps) <= 2  # stopped at the next step, not at the end
    assert any(kind == "phase" and text.startswith("caching latents") for kind, text in events)
    assert not (out / "cancelled.safetensors").exists() and not (tmp_path / "stop").exists()


def test_the_node_refuses_without_two_gpus(graph, comfy_dirs):
    (comfy_dirs / "models" / "checkpoints" / "some_model.safetensors").write_bytes(b"")
    with pytest.raises(GraphError, match="needs at least 2 NVIDIA GPUs on this machine"):
        graph.run({"1": {"class_type": "LLLiteKit_TrainDistributed", "inputs": {
            "trainer": "lora", "checkpoint": "some_model.safetensors", "dataset_config": "dataset.toml",
            "config": "max_train_steps = 1", "output_name": "x", "if_exists": "new name", "processes": 2,
            "machines": 1, "machine_rank": 0, "rendezvous": ""}}})
