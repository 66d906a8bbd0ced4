"""WD14 tagging from a tiny random timm ViT saved in the v3 layout (model.safetensors +
config.json + selected_tags.csv): known probabilities give sd-scripts' tag lists under every
option; the timm path equals onnxruntime on the same network exported as the ONNX v2/v3
graph (BGR 0-255 NHWC in, probabilities out); the node writes, appends and counts tags."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graph_runner import GraphError
from lllite_kit.training.data_prep.model_files import ModelFileMissing
from lllite_kit.training.data_prep.tagger import (Labels, TagOptions, Tagger, load_tagger, parse_tag_replacement, prepare,
                                                  select_tags)

from tiny_data_prep import MODEL_ARGS, PROBS, TAGS, tiny_tagger

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def taggers(comfy_dirs):
    import folder_paths

    root = Path(comfy_dirs) / "models" / "taggers"
    folder_paths.add_model_folder_path("taggers", str(root), is_default=True)
    if not (root / "wd-vit-tagger-v3" / "model.safetensors").is_file():
        tiny_tagger(root / "wd-vit-tagger-v3")
        tiny_tagger(root / "random-tagger", fixed=False)
    return root


LABELS = Labels([n for n, _ in TAGS], [c for _, c in TAGS])


@pytest.mark.parametrize("options, expected", [
    (TagOptions(), ["long_hair", "1girl", "^_^", "hatsune_miku_(vocaloid)"]),
    (TagOptions(general_threshold=0.5, character_threshold=0.3, remove_underscore=True),
     ["long hair", "1girl", "hatsune miku (vocaloid)", "rem (re:zero)"]),
    (TagOptions(character_threshold=0.3, character_tags_first=True, use_rating_tags=True),
     ["sensitive", "rem_(re:zero)", "hatsune_miku_(vocaloid)", "long_hair", "1girl", "^_^"]),
    (TagOptions(use_rating_tags_as_last_tag=True, character_tag_expand=True, undesired_tags="^_^, 1girl"),
     ["long_hair", "hatsune_miku, vocaloid", "sensitive"]),
    (TagOptions(always_first_tags="1girl, hatsune_miku_(vocaloid)", character_threshold=1.01),
     ["1girl", "long_hair", "^_^"]),
    (TagOptions(always_first_tags="^_^, 1girl", caption_separator="; ", undesired_tags="long_hair; x"),
     ["1girl", "^_^", "hatsune_miku_(vocaloid)"]),
    # replacements after underscores and expansion; an escaped comma names the expanded character tag
    (TagOptions(remove_underscore=True, character_tag_expand=True, tag_replacement="long hair,very long hair;"
                r"hatsune miku\, vocaloid,miku;^_^, smile ;nothing,x"),
     ["very long hair", "1girl", "smile", "miku"]),
    # the replaced name is what undesired_tags and always_first_tags see
    (TagOptions(tag_replacement="1girl,solo", undesired_tags="long_hair", always_first_tags="solo"),
     ["solo", "^_^", "hatsune_miku_(vocaloid)"]),
])
def test_known_probabilities_give_sd_scripts_tag_lists(options, expected):
    frequency = Counter()
    assert select_tags(np.array(PROBS), LABELS, options, frequency) == expected
    assert set(frequency) == set(expected) and set(frequency.values()) == {1}


def test_tag_replacement_parsing():
    assert parse_tag_replacement(r"a\;b,c\,d; e , f") == {"a;b": "c,d", "e": "f"}
    assert parse_tag_replacement("  ") == {}
    for bad in ("a", "a,b,c", "a,b;c"):
        with pytest.raises(ValueError, match="is not `source,target`"):
            parse_tag_replacement(bad)


def test_prepare_matches_sd_scripts_pixels():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    x = prepare(rgba, 40)  # enlarged: lanczos; transparent and padding both white
    assert x.shape == (40, 40, 3) and x.dtype == np.float32
    assert np.allclose(x[20, 39], 255) and np.allclose(x[0, 0], 255)
    blue = prepare(Image.new("RGB", (64, 64), (0, 0, 255)), 32)  # shrunk with area
    assert np.allclose(blue[..., 0], 255) and np.allclose(blue[..., 2], 0)  # BGR


def test_tagger_batches_and_counts(taggers):
    tagger = Tagger(taggers / "wd-vit-tagger-v3")
    images = [Image.new("RGB", (30 + 7 * i, 20), (i * 40, 0, 0)) for i in range(3)]
    seen = []
    result = tagger.tag(images, TagOptions(batch_size=2, remove_underscore=True), progress=lambda d, n: seen.append(d))
    assert result.tags == [["long hair", "1girl", "^_^", "hatsune miku (vocaloid)"]] * 3
    assert result.frequency_table()[0] == ("long hair", 3) and seen == [2, 3]


def test_timm_path_equals_onnxruntime_on_the_same_network(taggers, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    random_folder = taggers / "random-tagger"
    net = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(TAGS), **MODEL_ARGS).eval()
    import safetensors.torch

    net.load_state_dict(safetensors.torch.load_file(random_folder / "model.safetensors"))

    class AsPublished(torch.nn.Module):  # the ONNX taggers: BGR 0-255 NHWC in, probabilities out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.sigmoid(self.m((x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5))

    onnx_folder = tmp_path / "wd-v1-4-vit-tagger-v2"
    onnx_folder.mkdir()
    (onnx_folder / "selected_tags.csv").write_bytes((random_folder / "selected_tags.csv").read_bytes())
    torch.onnx.export(AsPublished(net), (torch.rand(1, 32, 32, 3) * 255,), str(onnx_folder / "model.onnx"),
                      input_names=["input_1"], output_names=["predictions_sigmoid"],
                      dynamic_axes={"input_1": {0: "batch"}}, dynamo=False)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8))
              for i in range(3)]
    batch = np.stack([prepare(im, 32) for im in images])
    ours = Tagger(random_folder).probabilities(batch)
    session = ort.InferenceSession(str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input_1": batch})[0]
    assert np.abs(ours - reference).max() < 1e-5
    assert np.abs(Tagger(onnx_folder).probabilities(batch) - reference).max() == 0  # the v2 path is onnxruntime
    options = TagOptions(general_threshold=float(np.median(reference[:, 4:8])), character_threshold=0.0)
    assert Tagger(random_folder).tag(images, options).tags == Tagger(onnx_folder).tag(images, options).tags


# The other v3 families as their config.json names them for timm, built tiny: the folder's
# config.json -> timm model -> strict load of model.safetensors works for each
FAMILIES = {
    "wd-swinv2-tagger-v3": ("swinv2_base_window8_256", {"img_size": 32, "window_size": 4, "embed_dim": 16,
                                                        "depths": [1, 1], "num_heads": [1, 2]}),
    "wd-convnext-tagger-v3": ("convnext_base", {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}),
    "wd-eva02-large-tagger-v3": ("eva02_large_patch14_448", {"img_size": 32, "patch_size": 8, "embed_dim": 32,
                                                             "depth": 1, "num_heads": 2}),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_swinv2_convnext_eva02_folders_run_through_timm(name, tmp_path):
    import safetensors.torch

    arch, args = FAMILIES[name]
    folder = tiny_tagger(tmp_path / name, fixed=False)  # the CSV; network and config replaced below
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=len(TAGS), **args).eval()
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": len(TAGS), "model_args": args,
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}))
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 24 + 4 * i, 3), dtype=np.uint8))
              for i in range(2)]
    batch = np.stack([prepare(im, 32) for im in images])
    with torch.no_grad():
        expected = torch.sigmoid(net((torch.from_numpy(batch).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5)).numpy()
    tagger = Tagger(folder)
    assert tagger.size == 32 and np.abs(tagger.probabilities(batch) - expected).max() < 1e-6
    assert len(tagger.tag(images, TagOptions(general_threshold=0.0, character_threshold=0.0)).tags[0]) == 6  # 6 non-rating tags


def test_v2_onnx_folder_without_onnxruntime_says_what_to_install(taggers, tmp_path, monkeypatch):
    import sys

    folder = tmp_path / "wd-v1-4-vit-tagger-v2"
    folder.mkdir()
    (folder / "selected_tags.csv").write_bytes((taggers / "random-tagger" / "selected_tags.csv").read_bytes())
    (folder / "model.onnx").write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ModelFileMissing, match=r"only model.onnx \(a v2 tagger\), which needs onnxruntime: install it.*"
                                               r"wd-vit-tagger-v3\), which runs without it"):
        Tagger(folder)


def test_missing_files_name_the_folder_and_url(taggers, tmp_path):
    with pytest.raises(ModelFileMissing, match=r"wd-eva02-large-tagger-v3.*https://huggingface.co/SmilingWolf/wd-eva02-large-tagger-v3"):
        load_tagger("wd-eva02-large-tagger-v3", [str(taggers)])
    (tmp_path / "wd-swinv2-tagger-v3").mkdir()
    (tmp_path / "wd-swinv2-tagger-v3" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileMissing, match=r"selected_tags.csv is missing in models/taggers/wd-swinv2-tagger-v3/"):
        load_tagger("wd-swinv2-tagger-v3", [str(tmp_path)])


def test_tag_node_appends_and_reports_frequency(graph, taggers, comfy_dirs):
    folder = Path(comfy_dirs) / "input" / "tag_set"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (40, 30), (0, 90 * i, 0)).save(folder / f"t{i}.png")
    (folder / "t1.txt").write_text("sks, 1girl\n")
    inputs = dict(model="wd-vit-tagger-v3", image_dir="tag_set", general_threshold=0.35, character_threshold=0.35,
                  rating_tag="first", character_tags_first=False, character_tag_expand=False, remove_underscore=True,
                  undesired_tags="^_^", always_first_tags="", caption_separator=", ", batch_size=2, write_files=True,
                  caption_extension=".txt", if_exists="append")
    graph.run({"1": {"class_type": "LLLiteKit_TagImages", "inputs": inputs}})
    tags, frequency, chart, folder_out = graph.node_outputs("1")
    assert tags == ["sensitive, long hair, 1girl, hatsune miku (vocaloid)"] * 2
    assert (folder / "t0.txt").read_text() == "sensitive, long hair, 1girl, hatsune miku (vocaloid)\n"
    assert (folder / "t1.txt").read_text() == "sks, 1girl, sensitive, long hair, hatsune miku (vocaloid)\n"
    assert frequency[0].splitlines()[0] == "long hair: 2" and "sensitive: 2" in frequency[0]
    assert chart[0].shape[-1] == 3 and folder_out == [str(folder)]

    # sd-scripts' --output_path JSON (with --append_tags: the existing tags first), and a replacement
    (folder / "t0.txt").unlink()
    (folder / "t1.txt").write_text("sks\n")
    graph.run({"1": {"class_type": "LLLiteKit_TagImages", "inputs": {
        **inputs, "write_files": False, "tag_replacement": "long hair,long_hair", "output_json": "tags/set.json"}}})
    written = json.loads((Path(comfy_dirs) / "output" / "tags" / "set.json").read_text(encoding="utf-8"))
    assert written == {str(folder / "t0.png"): {"tags": "sensitive, long_hair, 1girl, hatsune miku (vocaloid)", "image_size": [40, 30]},
                       str(folder / "t1.png"): {"tags": "sks, sensitive, long_hair, 1girl, hatsune miku (vocaloid)",
                                                "image_size": [40, 30]}}
    assert (folder / "t1.txt").read_text() == "sks\n"  # write_files off: the tag files untouched
    with pytest.raises(GraphError, match="is not `source,target`"):
        graph.run({"1": {"class_type": "LLLiteKit_TagImages", "inputs": {**inputs, "tag_replacement": "a;b"}}})


def test_command_line_tag(taggers, tmp_path, capsys):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import prepare_dataset as cli

    Image.new("RGB", (30, 30), "white").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("mine\n")
    argv = ["tag", str(tmp_path), "--model", str(taggers / "wd-vit-tagger-v3"), "--character_threshold", "1.01",
            "--use_rating_tags_as_last_tag", "--remove_underscore", "--frequency_tags"]
    assert cli.main(argv) == 0
    assert (tmp_path / "a.txt").read_text() == "mine\n"  # kept without --append_tags / --if_exists
    assert "long hair: 1" in capsys.readouterr().out
    assert cli.main([*argv, "--append_tags"]) == 0
    assert (tmp_path / "a.txt").read_text() == "mine, long hair, 1girl, ^_^, sensitive\n"
    out = tmp_path / "tags.jsonl"
    assert cli.main([*argv, "--output_path", str(out), "--tag_replacement", "1girl,girl"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"image_path": str(tmp_path / "a.png"), "caption": "long hair, girl, ^_^, sensitive", "image_size": [30, 30]}]
    assert (tmp_path / "a.txt").read_text() == "mine, long hair, 1girl, ^_^, sensitive\n"  # --output_path: no tag files
