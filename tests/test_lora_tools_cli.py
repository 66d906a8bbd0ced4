"""scripts/lora_tools.py: each subcommand on real files (the nodes' library), outputs in the
chosen folder under the pack's name rule (taken names get _2), bad input exits 1 naming it."""
import sys

import pytest
import safetensors.torch
import torch

from checkpoint_files import detectable_sd15
from conftest import REPO
from lora_helpers import attached, randomize

sys.path.insert(0, str(REPO / "scripts"))
import lora_tools as cli  # noqa: E402

@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_cli")
    for name, seed, options in (("a", 1, {"dim": 4}), ("b", 2, {"dim": 2, "alpha": 1.0}), ("dy", 3, {"dim": 4, "unit": 2})):
        _, _, adapter = attached(tiny, "sd15", **options)
        randomize(adapter, seed=seed)
        adapter.save(str(folder / f"{name}.safetensors"), torch.float32, {})
        adapter.detach()
    return folder


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_merge_writes_under_a_free_name(files, tmp_path, capsys):
    args = ["merge", files / "a.safetensors", files / "b.safetensors", "--ratios", "1", "0.5", "--mode", "svd",
            "--new_rank", "6", "--clamp_quantile", "1", "--output_dir", tmp_path, "--output_name", "ab", "--save_precision", "float"]
    assert _run(capsys, *args)[0] == 0
    assert _run(capsys, *args)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab.safetensors", "ab_2.safetensors"]
    merged = cli_lora(tmp_path / "ab.safetensors")
    a, b = cli_lora(files / "a.safetensors"), cli_lora(files / "b.safetensors")
    n = next(iter(b.modules))
    # rank 6 = 4 + 2 without clamping: the SVD keeps the whole sum
    torch.testing.assert_close(merged.delta(n), a.delta(n) + 0.5 * b.delta(n), rtol=1e-4, atol=1e-5)
    code, _, err = _run(capsys, *args[:-4], "--output_name", "../x")
    assert code == 1 and "not allowed" in err


def cli_lora(path):
    from lllite_kit.training.lora.tools.common import LoRA

    return LoRA.load(str(path))


def test_resize_reports_modules_and_sizes(files, tmp_path, capsys):
    code, out, _ = _run(capsys, "resize", files / "a.safetensors", "--new_rank", "2", "--verbose",
                        "--output_dir", tmp_path, "--output_name", "a2")
    assert code == 0 and f"saved {tmp_path / 'a2.safetensors'}" in out
    resized = cli_lora(tmp_path / "a2.safetensors")
    assert {p["down"].shape[0] for p in resized.modules.values()} == {2}
    assert sum(1 for line in out.splitlines() if "lora_unet_" in line or "lora_te_" in line) == len(resized.modules)


def test_dylora_cut_and_inspect(files, tmp_path, capsys):
    code, _, _ = _run(capsys, "dylora-cut", files / "dy.safetensors", "--rank", "2", "--output_dir", tmp_path)
    assert code == 0 and cli_lora(tmp_path / "dylora_cut.safetensors").modules
    code, _, err = _run(capsys, "dylora-cut", files / "dy.safetensors", "--rank", "3", "--output_dir", tmp_path)
    assert code == 1 and err.startswith("lora_tools dylora-cut: ")
    code, out, _ = _run(capsys, "inspect", tmp_path / "dylora_cut.safetensors", "--chart", tmp_path / "chart.png")
    assert code == 0 and "ss_lora_tool: dylora_cut" in out and "IN01" in out
    assert (tmp_path / "chart.png").stat().st_size > 1000
    code, _, err = _run(capsys, "inspect", "no_such_lora")
    assert code == 1 and "LoRA not found" in err


def _checkpoint(tiny, path, tweak: float):
    """A U-Net-only SD1.5 checkpoint; `tweak` adds a rank-1 change to one attention projection."""
    model = detectable_sd15(tiny, 0)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.diffusion_model.state_dict().items()}
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    g = torch.Generator().manual_seed(7)
    sd[key] = sd[key] + tweak * torch.outer(torch.randn(320, generator=g), torch.randn(320, generator=g))
    safetensors.torch.save_file(sd, str(path))


def test_extract_from_two_checkpoints(tiny, tmp_path, capsys):
    base, tuned = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    _checkpoint(tiny, base, 0.0)
    _checkpoint(tiny, tuned, 0.1)
    code, out, err = _run(capsys, "extract", "--model_org", base, "--model_tuned", tuned, "--dim", "1",
                          "--clamp_quantile", "1", "--svd_method", "exact", "--no_text_encoder",
                          "--output_dir", tmp_path, "--save_precision", "float")
    assert code == 0, err
    lora = cli_lora(tmp_path / "extracted.safetensors")
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tuned_w = safetensors.torch.load_file(str(tuned))
    base_w = safetensors.torch.load_file(str(base))
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    torch.testing.assert_close(lora.delta(name), tuned_w[key] - base_w[key], rtol=1e-4, atol=1e-5)
    assert lora.metadata["ss_sd_model_name"] == "base.safetensors"
    assert '"tuned": "tuned.safetensors"' in lora.metadata["ss_lora_tool_args"]
