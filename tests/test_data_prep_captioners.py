"""BLIP and GIT captioning from tiny random models saved in the published folder layout
(config.json + model.safetensors + processor + BERT vocab): the captions equal a direct
transformers generate call with the same options, batching, progress and Cancel, files
written beside images without overwriting, linked images captioned with nothing written, and missing folders/files named with the URL."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lllite_kit.training.data_prep.captioner import Captioner, CaptionOptions, load_captioner
from lllite_kit.training.data_prep.model_files import ModelFileMissing
from tiny_data_prep import tiny_blip, tiny_git


@pytest.fixture(scope="module")
def captioners(comfy_dirs):
    import folder_paths

    root = Path(comfy_dirs) / "models" / "captioners"
    folder_paths.add_model_folder_path("captioners", str(root), is_default=True)
    if not (root / "blip-image-captioning-base" / "model.safetensors").is_file():
        tiny_blip(root / "blip-image-captioning-base")
        tiny_git(root / "git-base")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Generation is hundreds of tiny forwards: on a loaded 2-core machine one thread is ~10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pictures(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)) for i in range(n)]


def _direct(folder: Path, kind: str, images, batch: int, prompt: str, seed: int, **generate) -> list[str]:
    """transformers alone: the processor, generate with the given options, decode."""
    from transformers import AutoProcessor, BlipForConditionalGeneration, GitForCausalLM

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = {"blip": BlipForConditionalGeneration, "git": GitForCausalLM}[kind].from_pretrained(folder).eval()
    torch.manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            if prompt:
                inputs = processor(images=chunk, text=[prompt] * len(chunk), return_tensors="pt")
            else:
                inputs = processor(images=chunk, return_tensors="pt")
            texts = processor.batch_decode(model.generate(**inputs, **generate), skip_special_tokens=True)
            out += [t[len(prompt.strip()):].strip() if prompt else t.strip() for t in texts]
    return out


def test_blip_nucleus_and_beam_equal_direct_generate(captioners):
    folder = captioners / "blip-image-captioning-base"
    images = _pictures(3)
    captioner = Captioner(folder)
    nucleus = CaptionOptions(max_length=12, min_length=3, seed=7, batch_size=2)
    ours = captioner.caption(images, nucleus)
    assert ours == _direct(folder, "blip", images, 2, "a picture of ", 7, max_length=12, min_length=3, do_sample=True,
                           top_p=0.9, repetition_penalty=1.1)
    assert len(set(ours)) > 1 and all(ours)
    assert captioner.caption(images, nucleus) == ours  # the seed makes sampling repeatable
    beam = CaptionOptions(decoding="beam search", num_beams=3, max_length=12, min_length=3, batch_size=3)
    assert captioner.caption(images, beam) == _direct(folder, "blip", images, 3, "a picture of ", 42, max_length=12,
                                                      min_length=3, num_beams=3, do_sample=False, repetition_penalty=1.0)


def test_git_greedy_equals_direct_generate_and_cancel_stops_between_batches(captioners):
    folder = captioners / "git-base"
    images = _pictures(3)
    captioner = Captioner(folder)
    greedy = CaptionOptions(decoding="greedy", max_length=10, min_length=0, batch_size=2)
    seen = []
    ours = captioner.caption(images, greedy, progress=lambda done, total: seen.append((done, total)))
    assert ours == _direct(folder, "git", images, 2, "", 42, max_length=10, min_length=0, do_sample=False, num_beams=1)
    assert seen == [(2, 3), (3, 3)]

    class Cancelled(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        captioner.caption(images, greedy, progress=lambda d, t: seen.append(d), check_interrupt=check)
    assert seen[-1] == 2  # the first batch ran, the second never started


def test_missing_folder_and_file_name_the_url(tmp_path):
    empty = tmp_path / "captioners"  # not the shared models folder: an example workflow's test puts this model there
    empty.mkdir()
    with pytest.raises(ModelFileMissing, match=r"blip-image-captioning-large.*https://huggingface.co/Salesforce/blip-image-captioning-large"):
        load_captioner("blip-image-captioning-large", [str(empty)])
    partial = tmp_path / "git-large-coco"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(ModelFileMissing, match=r"model.safetensors is missing in models/captioners/git-large-coco/ .*"
                                               r"https://huggingface.co/microsoft/git-large-coco"):
        load_captioner("git-large-coco", [str(tmp_path)])


def test_caption_node_writes_beside_images_and_keeps_existing(graph, captioners, comfy_dirs):
    folder = Path(comfy_dirs) / "input" / "captions_set"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(_pictures(3)):
        image.save(folder / f"p{i}.png")
    (folder / "p1.caption").write_text("mine\n")
    inputs = dict(model="blip-image-captioning-base", image_dir="captions_set", decoding="beam search", num_beams=2,
                  top_p=0.9, max_length=10, min_length=2, seed=42, batch_size=2, blip_prompt="a picture of ",
                  git_remove_words=False, write_files=True, caption_extension=".caption", if_exists="skip")
    import comfy.utils

    steps = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    try:
        graph.run({"1": {"class_type": "LLLiteKit_CaptionImages", "inputs": inputs}})
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    captions = graph.node_outputs("1")[0]
    expected = Captioner(captioners / "blip-image-captioning-base").caption(
        _pictures(3), CaptionOptions(decoding="beam search", num_beams=2, max_length=10, min_length=2, batch_size=2))
    assert captions == expected
    assert graph.node_outputs("1")[2] == ["\n".join(expected)]  # caption_lines, for Training Dataset from Images
    assert (folder / "p0.caption").read_text() == expected[0] + "\n"
    assert (folder / "p1.caption").read_text() == "mine\n"  # an existing caption is kept
    assert steps[-1] == (3, 3)  # ComfyUI's progress bar reached the end


def test_git_node_captions_linked_images_and_writes_nothing(graph, captioners, comfy_dirs):
    inputs = dict(model="git-base", images=["1", 0], decoding="greedy", num_beams=1, top_p=0.9, max_length=8,
                  min_length=2, seed=42, batch_size=2, blip_prompt="a picture of ", git_remove_words=True,
                  write_files=True, caption_extension=".caption", if_exists="overwrite")
    before = sorted(Path(comfy_dirs).rglob("*.caption"))
    graph.run({"1": {"class_type": "EmptyImage", "inputs": dict(width=40, height=24, batch_size=3, color=0x3366CC)},
               "2": {"class_type": "LLLiteKit_CaptionImages", "inputs": inputs}})
    captions, folder, lines = graph.node_outputs("2")
    expected = Captioner(captioners / "git-base").caption(
        [Image.new("RGB", (40, 24), (0x33, 0x66, 0xCC))] * 3,
        CaptionOptions(decoding="greedy", max_length=8, min_length=2, batch_size=2, remove_words=True))
    assert captions == expected and lines == ["\n".join(expected)]
    assert folder == [""]  # no folder: nothing was written, whatever write_files says
    assert sorted(Path(comfy_dirs).rglob("*.caption")) == before


def test_command_line_caption(captioners, tmp_path, capsys):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import prepare_dataset as cli

    for i, image in enumerate(_pictures(2)):
        image.save(tmp_path / f"q{i}.png")
    argv = ["caption", str(tmp_path), "--model", str(captioners / "git-base"), "--greedy", "--max_length", "8",
            "--min_length", "0", "--batch_size", "2", "--caption_extension", ".txt"]
    assert cli.main(argv) == 0
    expected = Captioner(captioners / "git-base").caption(
        _pictures(2), CaptionOptions(decoding="greedy", max_length=8, min_length=0, batch_size=2))
    assert (tmp_path / "q1.txt").read_text() == expected[1] + "\n"
    assert cli.main([*argv[:3], str(tmp_path / "nope" / "git-large")]) == 1
    assert "https://huggingface.co/microsoft/git-large" in capsys.readouterr().err


def test_caption_node_absent_folder_fails_before_running_naming_the_url(graph, captioners, tmp_path, monkeypatch):
    import folder_paths
    from graph_runner import GraphError

    # models/captioners as an empty folder: an example workflow's test, run earlier in the same
    # process, may have put a tiny blip-image-captioning-large into the shared one
    (tmp_path / "captioners").mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "captioners",
                        ([str(tmp_path / "captioners")], folder_paths.folder_names_and_paths["captioners"][1]))

    inputs = dict(model="blip-image-captioning-large", image_dir="captions_set", decoding="greedy", num_beams=1,
                  top_p=0.9, max_length=10, min_length=2, seed=42, batch_size=2, blip_prompt="a picture of ",
                  git_remove_words=False, write_files=False, caption_extension=".caption", if_exists="skip")
    with pytest.raises(GraphError, match="https://huggingface.co/Salesforce/blip-image-captioning-large"):
        graph.run({"1": {"class_type": "LLLiteKit_CaptionImages", "inputs": inputs}})
