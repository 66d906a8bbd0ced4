"""What the pack reads and writes cannot be turned against the user: a state file cannot run
code, names cannot leave their folder, writes are atomic (a full disk keeps the previous file),
graphs on a network-facing ComfyUI read only ComfyUI's folders and listed roots."""
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from lllite_kit.files.atomic import WriteFailed, write_atomic
from lllite_kit.files.names import BadName, check_output_name
from lllite_kit.files.roots import READ_ROOTS_FILE, PathNotAllowed, check_readable, check_writable
from lllite_kit.training.output_files import plan_output
from lllite_kit.training.state import UnsafeStateFile, latest_state, load_state, save_state
from paths import COMFYUI_DIR, REPO


class _Payload:
    """Unpickling this calls open(path, "w"): a file appears if the payload ever runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_state_file_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    state = tmp_path / "my_lora-state.pt"
    with open(state, "wb") as f:
        pickle.dump({"version": 1, "adapter": _Payload(marker)}, f)
    torch.save({"version": 1, "evil": _Payload(marker)}, tmp_path / "saved-by-torch-state.pt")
    for path in (state, tmp_path / "saved-by-torch-state.pt"):
        with pytest.raises(UnsafeStateFile, match="refused: it holds Python objects") as err:
            load_state(path)
        assert str(path) in str(err.value)
    assert not marker.exists()


def test_the_state_file_round_trips_with_everything_the_engine_stores(tmp_path):
    state = {"adapter": {"w": torch.randn(3)}, "optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict(),
             "generator": torch.Generator().get_state(), "losses": [0.5, 0.25], "saved": ["/a.safetensors"],
             "config": {"betas": (0.9, 0.99), "name": "x", "lr": None}, "evaluations": [(0, {"gap": 0.0})]}
    path = save_state(tmp_path / "x-state.pt", state)
    loaded = load_state(path)
    assert torch.equal(loaded["adapter"]["w"], state["adapter"]["w"]) and loaded["config"]["betas"] == (0.9, 0.99)
    assert [p.name for p in tmp_path.iterdir()] == ["x-state.pt"]  # no temporary file left


def test_resume_finds_exactly_its_own_runs_states(tmp_path):
    for name in ("my_lora-v2-state.pt", "my_lora-step00000004-state.pt", "my_lora_2-state.pt", "my_loraX-state.pt",
                 "my[lora]-state.pt", "my_lora-v2-step00000009-state.pt"):
        save_state(tmp_path / name, {})
    assert latest_state(tmp_path, "my_lora").name == "my_lora-step00000004-state.pt"
    assert latest_state(tmp_path, "my[lora]").name == "my[lora]-state.pt"  # glob characters are plain characters
    assert latest_state(tmp_path, "my*") is None


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../x", "C:\\x", "d:x", "a\x00b", "", " ", ".x", "a/.b",
                                  "a\\b", "a/", "x\n"])
def test_output_names_that_could_leave_their_folder_are_refused_naming_the_rule(name):
    with pytest.raises(BadName, match=r"is not allowed: (?s:.*)\nUse a plain file name"):
        check_output_name(name)


@pytest.mark.parametrize("name", ["my_lora", "people/anna v2", "sks-dog_1.5"])
def test_plain_names_and_subfolders_are_allowed(name):
    assert check_output_name(name) == name


def test_an_existing_name_gets_a_new_number_resumes_or_is_replaced_only_by_choice(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"1")
    (tmp_path / "a_2.safetensors").write_bytes(b"2")
    assert plan_output(tmp_path, "a", "new name") == ("a_3", None)
    assert plan_output(tmp_path, "a", "overwrite") == ("a", None)
    assert plan_output(tmp_path, "fresh", "new name") == ("fresh", None)
    with pytest.raises(FileExistsError, match="no training state to resume from"):
        plan_output(tmp_path, "a", "resume")
    save_state(tmp_path / "a-step00000002-state.pt", {})
    assert plan_output(tmp_path, "a", "resume") == ("a", tmp_path / "a-step00000002-state.pt")


def test_graphs_write_only_inside_comfyuis_folders(comfy_dirs, tmp_path):
    assert check_writable(comfy_dirs / "models" / "loras" / "sub") == comfy_dirs / "models" / "loras" / "sub"
    check_writable(comfy_dirs / "output")
    for bad in (tmp_path, comfy_dirs / "models" / "loras" / ".." / ".." / "..", "/etc"):
        with pytest.raises(PathNotAllowed, match="outside ComfyUI's model, output and temp folders"):
            check_writable(bad)
    link = comfy_dirs / "output" / "escape"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PathNotAllowed):
        check_writable(link)  # a symlink inside output that leads out is outside


def test_reads_are_free_on_loopback_and_limited_to_comfy_folders_and_listed_roots_on_a_network(comfy_dirs, tmp_path, monkeypatch):
    import folder_paths
    from comfy.cli_args import args

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(args, "listen", "127.0.0.1")
    assert check_readable(data, "train_dir") == data
    monkeypatch.setattr(args, "listen", "0.0.0.0")
    monkeypatch.setattr(folder_paths, "base_path", str(tmp_path / "comfy"))
    with pytest.raises(PathNotAllowed, match=r"train_dir .* ComfyUI listens on a network address\.\n.*lllite_kit_read_roots\.txt"):
        check_readable(data, "train_dir")
    check_readable(comfy_dirs / "input" / "set", "train_dir")
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / READ_ROOTS_FILE).write_text(f"# datasets\n{data}\n", encoding="utf-8")
    assert check_readable(data / "10_sks cat", "train_dir") == data / "10_sks cat"
    with pytest.raises(PathNotAllowed):
        check_readable("/etc/passwd", "sample_prompts file")


def test_a_graph_on_a_network_address_cannot_read_a_dataset_or_prompt_file_elsewhere(graph, comfy_dirs, tmp_path, monkeypatch):
    from comfy.cli_args import args

    from graph_runner import GraphError
    from test_training_graph import _graph
    from training_data_helpers import ring_picture

    ring_picture(comfy_dirs / "input" / "train_a.png", 0)
    ring_picture(comfy_dirs / "input" / "train_b.png", 90)
    monkeypatch.setattr(args, "listen", "0.0.0.0")
    prompt = _graph(1)
    prompt["5"] = {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
        "train_dir": str(tmp_path), "reg_dir": "", "caption_extension": ".txt", "resolution": 64, "batch_size": 1,
        "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0, "caption_dropout_rate": 0.0}}
    with pytest.raises(GraphError, match=f"train_dir '{tmp_path}' is outside ComfyUI's folders, and ComfyUI listens on a network"):
        graph.run(prompt)
    (tmp_path / "prompts.txt").write_text("a cat", encoding="utf-8")
    prompt = _graph(1, sample_prompts=str(tmp_path / "prompts.txt"))
    with pytest.raises(GraphError, match="sample_prompts file .*prompts.txt' is outside ComfyUI's folders"):
        graph.run(prompt)


def test_a_full_disk_keeps_the_previous_file_and_says_what_happened(tmp_path):
    """A real write failure: a child process whose file size limit (RLIMIT_FSIZE) is below the
    new file's size saves a LoRA over an existing one."""
    target = tmp_path / "my_lora.safetensors"
    write_atomic(target, b"previous" * 1000)
    script = textwrap.dedent(f"""
        import resource, sys, types
        sys.path.insert(0, {str(COMFYUI_DIR)!r})
        pkg = types.ModuleType("lllite_kit"); pkg.__path__ = [{str(REPO)!r}]; sys.modules["lllite_kit"] = pkg
        import torch
        from comfy.cli_args import args
        args.cpu = True
        from lllite_kit.training.lora.file import save_lora
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            save_lora({str(target)!r}, {{"lora_unet_x.lora_down.weight": torch.zeros(64, 1024)}}, {{}}, torch.float32)
        except OSError as e:
            print(e, file=sys.stderr); sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"could not write LoRA file {target}" in proc.stderr and "File too large" in proc.stderr
    assert "the previous file there is unchanged" in proc.stderr
    assert target.read_bytes() == b"previous" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["my_lora.safetensors"]  # the partial temporary file is gone


def test_write_failed_is_an_oserror_with_the_errno():
    with pytest.raises(WriteFailed) as err:
        write_atomic("/proc/definitely/not/here.bin", b"x")
    assert isinstance(err.value, OSError)
