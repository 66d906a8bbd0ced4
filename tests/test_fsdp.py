"""Full fine-tuning sharded with FSDP (training/fsdp.py) under torchrun on CPU (gloo): two
processes with batch 1 each and the U-Net sharded end with the weights of one unsharded process
with batch 2, and each process holds about half the U-Net's parameter bytes (and optimizer state).
SGD with momentum: AdamW divides by the root of tiny second moments, which turns float summation
order into visible differences on weights whose gradient is near zero."""
import os
import re
import subprocess
import sys

import pytest
import safetensors.torch

from conftest import COMFYUI_DIR, REPO
from test_distributed_training import _dataset

WORKER = REPO / "tests" / "fsdp_worker.py"
REPORT = re.compile(r"FSDP rank (\d) of 2: U-Net parameters ([\d.]+) MiB of ([\d.]+) MiB \(([\d.]+) %\), "
                    r"optimizer state ([\d.]+) MiB")


def _config(root, out):
    config = root / "fsdp.toml"
    config.write_text(f"""
[optimizer_arguments]
optimizer_type = "SGDNesterov"
learning_rate = 0.05
[training_arguments]
output_dir = "{out.as_posix()}"
max_train_steps = 2
save_state = false
save_precision = "float"
mixed_precision = "no"
seed = 7
""", encoding="utf-8")
    return config


def _train_here(config, dataset_config, output_name: str, tiny) -> None:
    """The unsharded single-process run, in this process (what fsdp_worker.py does without torchrun)."""
    from lllite_kit.training import session
    from lllite_kit.training.config import load_config
    from lllite_kit.training.full_model import FullModelOptions, train_full_model

    cfg = load_config(config, dataset_config=str(dataset_config), output_name=output_name)
    model, clip, vae = tiny.build_checkpoint("sd15", 0)
    train_full_model(cfg, model, clip, vae, session.datasets_from_config(cfg), FullModelOptions(), output_dir=cfg.output_dir)


def _train(args, processes: int):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {"COMFYUI_DIR": str(COMFYUI_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*launcher, str(WORKER), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_each_holds_half(tmp_path, tiny):
    out = tmp_path / "out"
    config = _config(tmp_path, out)
    _train_here(config, _dataset(tmp_path, 2), "one", tiny)
    log = _train(["--config_file", config, "--dataset_config", _dataset(tmp_path, 1), "--output_name", "two",
                  "--fsdp"], 2)

    one = safetensors.torch.load_file(out / "one.safetensors")
    two = safetensors.torch.load_file(out / "two.safetensors")
    base = {k: v.float() for k, v in tiny.build_model("sd15", 0).model.diffusion_model.state_dict().items()}
    unet = [k for k in one if k.startswith("model.diffusion_model.")]
    assert one.keys() == two.keys() and len(unet) == len(base)
    diff = max((one[k] - two[k]).abs().max().item() for k in unet)
    moved = max((one[k] - base[k.removeprefix("model.diffusion_model.")]).abs().max().item() for k in unet)
    print(f"largest U-Net weight difference, FSDP 2 x batch 1 vs 1 x batch 2: {diff:.3g} (training moved {moved:.3g})")
    assert moved > 1e-5 and diff < 1e-6

    ranks = {int(m[0]): [float(v) for v in m[1:]] for m in REPORT.findall(log)}
    assert sorted(ranks) == [0, 1], log[-2000:]
    print("\n".join(m.group(0) for m in REPORT.finditer(log)))
    for param_mib, full_mib, percent, state_mib in ranks.values():
        assert 45 < percent < 55 and state_mib == pytest.approx(param_mib, rel=0.01)  # the momentum of its shard
    assert sum(r[0] for r in ranks.values()) == pytest.approx(ranks[0][1], rel=0.02)  # the shards make the whole


def test_fsdp_refuses_what_a_sharded_run_cannot_do_and_is_a_no_op_alone():
    import torch

    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.distributed import SINGLE
    from lllite_kit.training.fsdp import problems, shard

    assert problems(TrainConfig(save_state=False)) == []
    found = problems(TrainConfig(save_state=True, sample_prompts="a photo", sample_every_n_steps=1), True)
    assert len(found) == 3 and "text encoders" in found[0] and "save_state = false" in found[1]
    assert "sample from the saved checkpoint" in found[2]
    assert shard(torch.nn.Linear(2, 2), SINGLE) is None
