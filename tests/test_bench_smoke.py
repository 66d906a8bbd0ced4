"""Every bench script still runs: each `bench/bench_*.py` with `--smoke` (its smallest
settings, one torch thread) in its own process against the real ComfyUI, and it must exit 0
and print at least one `ratio ... xN.NNN` line (ours against its baseline).

The scripts start together: each is mostly single-threaded start-up (importing torch and
ComfyUI), so on two cores they take half the time they would one after another."""
import os
import re
import subprocess
import sys

import pytest

from paths import COMFYUI_DIR, REPO

SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("bench_*.py"))
RATIO_LINE = re.compile(r"^ratio .+ x(\d+\.\d{3})\b", re.MULTILINE)
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """script -> (process, its stdout file, its stderr file); files, not pipes, so a chatty
    script never blocks on a full pipe while another test waits."""
    env = dict(os.environ, COMFYUI_DIR=str(COMFYUI_DIR))
    if os.environ.get("LLLITE_KIT_TEST_GPU") != "1":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, as the rest of the suite
    logs = tmp_path_factory.mktemp("bench_smoke")
    runs = {}
    for script in SCRIPTS:
        out, err = logs / f"{script}.out", logs / f"{script}.err"
        with open(out, "w") as o, open(err, "w") as e:
            runs[script] = (subprocess.Popen([sys.executable, str(REPO / "bench" / script), "--smoke"],
                                             cwd=REPO, env=env, stdout=o, stderr=e), out, err)
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_bench_script_is_covered():
    assert {"bench_train_lora.py", "bench_preprocessors.py", "bench_lllite_apply.py", "bench_lllite_train.py",
            "bench_controlnet_train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_smoke(script, smoke_runs):
    proc, out_file, err_file = smoke_runs[script]
    code = proc.wait(timeout=TIMEOUT_S)
    out, err = out_file.read_text(), err_file.read_text()
    assert code == 0, f"{script} --smoke exited {code}:\n{out[-2000:]}\n{err[-4000:]}"
    ratios = [float(v) for v in RATIO_LINE.findall(out)]
    assert ratios, f"{script} --smoke printed no ratio line:\n{out[-3000:]}"
    assert all(v > 0 for v in ratios), f"{script}: a ratio is zero: {ratios}"
