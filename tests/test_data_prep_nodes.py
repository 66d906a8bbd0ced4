"""The no-model dataset nodes through ComfyUI's executor: edit captions (preview, then
written), metadata JSON into the output folder (a path outside ComfyUI's folders refused),
resize into the output folder, the dataset look (contact sheet + report), a training dataset
from the metadata JSON."""
import json
from pathlib import Path

import pytest
from PIL import Image

from graph_runner import GraphError


@pytest.fixture
def dataset(comfy_dirs):
    folder = Path(comfy_dirs) / "input" / "prep" / "set1"
    folder.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate([(255, 0, 0), (0, 255, 0)]):
        Image.new("RGB", (48, 32), color).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"long_hair, 1girl, cat, cat, rating:safe{i}")
    return folder


def _run(graph, class_type, **inputs):
    graph.run({"1": {"class_type": class_type, "inputs": inputs}})
    return graph.node_outputs("1")


def _edit(write_files):
    return dict(image_dir="prep/set1", caption_extension=".txt", clean="tag rules", find="cat", replace="dog",
                dedupe_tags=True, first_tags="1girl", prefix="sks", suffix="", write_files=write_files)


def test_edit_captions_previews_then_writes(graph, dataset):
    out = _run(graph, "LLLiteKit_EditCaptions", **_edit(False))
    assert out[0] == ["sks, 1girl, long hair, dog", "sks, 1girl, long hair, dog"]
    assert (dataset / "img0.txt").read_text().startswith("long_hair")  # preview wrote nothing
    _run(graph, "LLLiteKit_EditCaptions", **_edit(True))
    assert (dataset / "img0.txt").read_text() == "sks, 1girl, long hair, dog\n"


def test_metadata_resize_and_look_nodes(graph, dataset, comfy_dirs):
    out = _run(graph, "LLLiteKit_MergeMetadata", image_dir="prep/set1", out_json="meta/set1.json", in_json="",
               caption_extension="", tags_extension=".txt", full_path=False, recursive=False, clean=True)
    path = Path(out[0][0])
    assert path == Path(comfy_dirs) / "output" / "meta" / "set1.json"
    assert json.loads(path.read_text()) == {"img0": {"tags": "long hair, 1girl, cat, cat"},
                                            "img1": {"tags": "long hair, 1girl, cat, cat"}}
    with pytest.raises(GraphError, match="outside ComfyUI's model, output and temp folders"):
        _run(graph, "LLLiteKit_MergeMetadata", image_dir="prep/set1", out_json=str(dataset / "m.json"), in_json="",
             caption_extension="", tags_extension=".txt", full_path=False, recursive=False, clean=False)

    out = _run(graph, "LLLiteKit_ResizeImages", src_dir="prep/set1", dst_dir="resized/set1", max_resolution="32x32",
               divisible_by=8, interpolation="auto", save_as_png=True, copy_associated_files=True, overwrite=False)
    dst = Path(out[0][0])
    assert Image.open(dst / "img0+32x32.png").size == (32, 24)  # 48x32 -> 39x26, cropped to multiples of 8
    assert (dst / "img0+32x32.txt").is_file()

    sheet, report, charts = _run(graph, "LLLiteKit_LookAtDataset", image_dir="prep/set1", caption_extension=".txt",
                                 resolution=64, columns=2, thumb_size=64, max_images=8)
    assert sheet[0].shape[0] == 1 and sheet[0].shape[2] == 128 and sheet[0].shape[3] == 3
    assert "2 images, 2 readable" in report[0] and "smaller than the training area (2" in report[0]
    assert "aspect ratio (width / height): < 0.5 0, 0.5-0.75 0, 0.75-0.95 0, 0.95-1.05 0, 1.05-1.33 0, 1.33-2 2" in report[0]
    assert "tag frequency: cat 4, 1girl 2, long_hair 2, rating:safe0 1, rating:safe1 1" in report[0]
    assert charts[0].shape == (1, 5 * 320, 640, 3)


def test_dataset_from_metadata_reads_the_merged_json_from_the_output_folder(graph, dataset, comfy_dirs):
    from lllite_kit.nodes.dataset_prep_nodes import DatasetFromMetadata
    from lllite_kit.training.data.metadata import scan_metadata

    (dataset / "img0.caption").write_text("a red card")
    out = _run(graph, "LLLiteKit_MergeMetadata", image_dir="prep/set1", out_json="meta/train.json", in_json="",
               caption_extension=".caption", tags_extension=".txt", full_path=False, recursive=False, clean=True)
    options = dict(num_repeats=3, resolution=64, batch_size=2, enable_bucket=False, flip_aug=False,
                   shuffle_caption=False, keep_tokens=1)
    for name in (out[0][0], "meta/train.json"):  # linked (absolute), or typed: the output folder first
        [dataset_config] = DatasetFromMetadata.execute(metadata_file=name, image_dir="prep/set1", **options).args[0]
        subset = dataset_config.subsets[0]
        assert subset.metadata_file == Path(comfy_dirs) / "output" / "meta" / "train.json" and subset.num_repeats == 3
        assert dataset_config.resolution == (64, 64) and dataset_config.batch_size == 2 and subset.keep_tokens == 1
    captions = {Path(i.name).name: i.caption for i in scan_metadata(subset)}
    assert captions == {"img0.png": "a red card, long hair, 1girl, cat, cat", "img1.png": "long hair, 1girl, cat, cat"}
    with pytest.raises(Exception, match="does not exist"):
        DatasetFromMetadata.execute(metadata_file="meta/none.json", image_dir="", **options)
