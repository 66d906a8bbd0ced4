"""Dataset preparation without models: sd-scripts' cleaning rules on a fixed list, caption
files written beside images (atomic, never over an existing one unless asked), the fine-tune
metadata JSON (merged, round-tripped through the training loader), resizing to resolutions
with sd-scripts' numbers, and the dataset report."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lllite_kit.training.data.config import SubsetConfig
from lllite_kit.training.data.metadata import scan_metadata
from lllite_kit.training.data_prep import cleaning, resize
from lllite_kit.training.data_prep.files import list_images, write_beside
from lllite_kit.training.data.buckets import Bucketer
from lllite_kit.training.data_prep.look import (Entry, Report, Subset, bucket_dataset, cell_header, contact_sheet,
                                                dataset_images, histogram_image, histograms, inspect)
from lllite_kit.training.data_prep.metadata import merge_metadata

# Inputs and outputs of sd-scripts' own clean_tags / clean_caption (finetune/
# clean_captions_and_tags.py at kohya-ss/sd-scripts commit 48d368fa, run on these strings;
# sd-scripts is not installable as a package, so the outputs are fixed here).
SD_SCRIPTS_TAGS = [
    ("1girl, long_hair, blue_eyes, white_shirt, shirt, smile, ^_^, rating:safe",
     "1girl, long hair, blue eyes, white shirt, smile, ^_^"),
    ("2girls, long_hair, blonde_hair, black_hair, blue_eyes, red_eyes, ponytail, twintails, shirt, white_shirt, "
     "hair_ornament, star_hair_ornament", "2girls, long hair, white shirt, star hair ornament"),
    ("multiple_boys, short_hair, brown_hair, sleeveless, long_sleeves, bob_cut, hime_cut, skirt, pleated_skirt",
     "multiple boys, short hair, brown hair, pleated skirt"),
    ("2girls, long_hair, blonde_hair, smile, hair_bun, single_hair_bun, braid, rating:explicit, rating:safe",
     "2girls, long hair, blonde hair, smile"),
    ("solo, ahoge, ahoge, simple_background, white_background, background",
     "solo, ahoge, ahoge, simple background, white background"),
    ("1girl, solo, rating:safe, general", "1girl, solo"),
]
SD_SCRIPTS_CAPTIONS = [
    ("an anime girl with long hair standing in a field", "an girl with long hair standing in a field"),
    ("a cartoon woman and a young lady", "a girl and a girl"),
    ("two women and a person", "two girls and a girl"),
    ("a cartoon drawing of anime anime anime characters", "a drawing of girls"),
    ("people at a female party with a cartoon character", "girls at a girl party with a girl"),
    ("a young young woman", "a girl"),
]


@pytest.mark.parametrize("tags, expected", SD_SCRIPTS_TAGS)
def test_clean_tags_matches_sd_scripts(tags, expected):
    assert cleaning.clean_tags(tags) == expected


@pytest.mark.parametrize("caption, expected", SD_SCRIPTS_CAPTIONS)
def test_clean_caption_matches_sd_scripts(caption, expected):
    assert cleaning.clean_caption(caption) == expected


def test_edit_caption_order_of_operations():
    text = "cat, sks, red, cat, |||, outdoors"
    assert cleaning.edit_caption(text, find="red", replace="blue", dedupe=True, first=["sks"], prefix="photo",
                                 suffix="best") == "photo, sks, cat, blue, |||, outdoors, best"
    assert cleaning.edit_caption("a, b, a") == "a, b, a"
    assert cleaning.edit_caption("sks, a, best", prefix="sks", suffix="best") == "sks, a, best"  # idempotent


def _image(path: Path, size=(40, 30), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_write_beside_keeps_overwrites_or_appends(tmp_path):
    img = _image(tmp_path / "a.png")
    assert write_beside(img, "one, two", ".txt") == tmp_path / "a.txt"
    assert write_beside(img, "three", ".txt") is None  # default: an existing caption is kept
    assert (tmp_path / "a.txt").read_text() == "one, two\n"
    write_beside(img, "two, three", ".txt", "append")
    assert (tmp_path / "a.txt").read_text() == "one, two, three\n"
    write_beside(img, "new", ".txt", "overwrite")
    assert (tmp_path / "a.txt").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.txt"]  # no temporary file left
    with pytest.raises(ValueError, match="start with a dot"):
        write_beside(img, "x", "txt")


def test_merge_metadata_merges_keeps_and_round_trips(tmp_path):
    data = tmp_path / "data"
    for name in ("b", "a", "c"):
        _image(data / f"{name}.png")
    (data / "a.caption").write_text("a cartoon woman\n")
    (data / "b.caption").write_text("a dog")
    (data / "a.txt").write_text("long_hair, 1girl, rating:safe")
    out = tmp_path / "meta.json"
    out.write_text(json.dumps({"old": {"caption": "kept"}, "a": {"caption": "replaced", "train_resolution": [64, 64]}}))

    result = merge_metadata(data, out, clean=True)  # in_json defaults to out_json, as in sd-scripts

    meta = json.loads(out.read_text())
    assert meta == {"old": {"caption": "kept"},
                    "a": {"caption": "a girl", "train_resolution": [64, 64],
                          "tags": "long hair, 1girl"},
                    "b": {"caption": "a dog"}}
    assert out.read_text() == json.dumps(meta, indent=2)  # sd-scripts' layout
    assert result.merged == {"caption": 2, "tags": 1}
    assert [p.name for p in result.missing["caption"]] == ["c.png"]

    del meta["old"]
    out.write_text(json.dumps(meta))
    items = scan_metadata(SubsetConfig(metadata_file=out, image_dir=data))
    assert {Path(i.name).name: i.caption for i in items} == {"a.png": "a girl, long hair, 1girl", "b.png": "a dog"}

    full = tmp_path / "full.json"
    merge_metadata(data, full, tags_extension=None, full_path=True)
    keys = list(json.loads(full.read_text()))
    assert keys == [str((data / "a.png").resolve()), str((data / "b.png").resolve())]
    items = scan_metadata(SubsetConfig(metadata_file=full))  # absolute keys need no image_dir
    assert len(items) == 2
    with pytest.raises(ValueError, match="recursive needs full_path"):
        merge_metadata(data, full, recursive=True)


def test_resize_folder_numbers_names_and_associated_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    src.mkdir()
    Image.fromarray(pixels).save(src / "p.png")
    (src / "p.txt").write_text("a cat")
    (src / "notes.md").write_text("x")

    result = resize.resize_folder(src, dst, "64x64, 32x32", divisible_by=8, save_as_png=True, copy_associated_files=True)

    first = np.asarray(Image.open(dst / "p+64x64.png"))
    # 6000 px > 4096: scale sqrt(4096/6000) -> 82x49 (truncated), INTER_AREA, center crop to 80x48
    expected = cv2.resize(pixels, (82, 49), interpolation=cv2.INTER_AREA)[0:48, 1:81]
    assert np.array_equal(first, expected)
    # the second target starts from the first's result (sd-scripts' loop): 80x48 -> 41x24 -> 40x24
    second = np.asarray(Image.open(dst / "p+32x32.png"))
    assert np.array_equal(second, cv2.resize(expected, (41, 24), interpolation=cv2.INTER_AREA)[:, 0:40])
    assert sorted(p.name for p in dst.iterdir()) == ["notes.md", "p+32x32.png", "p+32x32.txt", "p+64x64.png",
                                                     "p+64x64.txt", "p.txt"]
    assert len(result.written) == 2 and (dst / "p+64x64.txt").read_text() == "a cat"

    with pytest.raises(FileExistsError, match="nothing was written"):
        resize.resize_folder(src, dst, "64x64")
    resize.resize_folder(src, dst, "64x64", interpolation="lanczos4", overwrite=True)
    jpg = Image.open(dst / "p+64x64.jpg")
    assert jpg.format == "JPEG" and jpg.size == (82, 49)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        resize.resize_folder(src, tmp_path / "x", "512")


def test_inspect_reports_problems_and_draws_a_sheet(tmp_path):
    _image(tmp_path / "a.png", (64, 64), (250, 10, 10))
    _image(tmp_path / "b.png", (64, 64), (250, 10, 10))  # same picture as a
    c = tmp_path / "c.png"
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(c)  # a gradient, 32x32
    (tmp_path / "d.jpg").write_bytes(b"not an image")
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "b.txt").write_text("\n")

    report = inspect(list_images(tmp_path), ".txt", resolution=(48, 48))

    assert [p.name for p in report.unreadable] == ["d.jpg"]
    assert [p.name for p in report.missing_caption] == ["c.png", "d.jpg"]
    assert [p.name for p in report.empty_caption] == ["b.png"]
    assert [(p.name, s) for p, s in report.too_small] == [("c.png", (32, 32))]
    assert [(x.name, y.name) for x, y, _ in report.near_duplicates] == [("a.png", "b.png")]
    text = report.text()
    assert "4 images, 3 readable" in text and "a.png ~ b.png" in text
    sheet = contact_sheet(report, columns=2, thumb=64, resolution=64)
    assert sheet.width == 128 and sheet.height > 128
    # the bucket enable_bucket would give at resolution 64 (64x64 steps; a 40x30 picture -> 64x64 too)
    assert cell_header(report.entries[0], Bucketer(bucket_dataset(64))) == "a.png 64x64 -> 64x64"
    assert cell_header(Entry(Path("w.png"), (300, 100), None), Bucketer(bucket_dataset(128))) == "w.png 300x100 -> 192x64"
    assert cell_header(report.entries[3]) == "d.jpg UNREADABLE" and cell_header(report.entries[2]) == "c.png 32x32"
    # a's thumbnail is drawn red at its cell's centre
    assert sheet.getpixel((32, 32))[0] > 200 and sheet.getpixel((32, 32))[1] < 40


def test_look_counts_an_sd_scripts_tree_per_subset_with_repeats(tmp_path):
    for name, n in (("10_sks dog", 3), ("2_dog", 2)):
        for i in range(n):
            _image(tmp_path / name / f"{i}.png", (32 + 8 * i, 32), (40 * i, 90, 200))
    _image(tmp_path / "loose.png")  # beside the subsets: not trained, not counted
    (tmp_path / "notes").mkdir()    # not a <repeats>_ folder

    images, subsets = dataset_images(tmp_path)

    assert [(p.parent.name, p.name) for p in images] == [("10_sks dog", "0.png"), ("10_sks dog", "1.png"),
                                                         ("10_sks dog", "2.png"), ("2_dog", "0.png"), ("2_dog", "1.png")]
    assert subsets == [Subset("10_sks dog", 10, 3), Subset("2_dog", 2, 2)]
    report = inspect(images, ".txt", subsets=subsets)
    assert "34 images per epoch: 10_sks dog 3 x 10 repeats, 2_dog 2 x 2 repeats" in report.text()
    h = histograms(report)
    assert h.subsets == {"10_sks dog": 30, "2_dog": 4}
    assert h.text().startswith("images x repeats per subset: 10_sks dog 30, 2_dog 4")
    assert histogram_image(h).shape == (1, 4 * 320, 640, 3)  # subsets, sizes, aspects, caption lengths (no tags)
    plain = tmp_path / "10_sks dog"
    assert dataset_images(plain) == (list_images(plain), [])  # a plain folder: no subsets


def test_histograms_count_sizes_aspects_buckets_caption_lengths_and_tags():
    report = Report([Entry(Path("square.png"), (64, 64), "a, b, c"), Entry(Path("big.png"), (300, 300), "A"),
                     Entry(Path("wide.png"), (200, 64), "a, b"), Entry(Path("tall.png"), (64, 200), None),
                     Entry(Path("broken.png"), None, "a photo of a long thing with many words in it")])
    h = histograms(report, resolution=128)
    assert h.sizes == {"< 256": 3, "256-512": 1, "512-768": 0, "768-1024": 0, "1024-1536": 0, "1536-2048": 0, ">= 2048": 0}
    assert h.aspects == {"< 0.5": 1, "0.5-0.75": 0, "0.75-0.95": 0, "0.95-1.05": 2, "1.05-1.33": 0, "1.33-2": 0, ">= 2": 1}
    # resolution 128: enable_bucket's buckets 64..256 by 64; 200x64 (3.1) -> 192x64, 64x200 -> 64x192, squares -> 128x128
    assert h.buckets == {"64x192": 1, "128x128": 2, "192x64": 1}
    assert h.caption_words == {"< 5": 3, "5-10": 0, "10-20": 1, "20-40": 0, "40-75": 0, ">= 75": 0}
    assert list(h.tags.items()) == [("a", 3), ("b", 2), ("a photo of a long thing with many words in it", 1), ("c", 1)]
    assert "training bucket: 64x192 1, 128x128 2, 192x64 1" in h.text()
    assert histogram_image(h).shape == (1, 5 * 320, 640, 3)
    assert not histograms(report).buckets and histogram_image(histograms(report)).shape == (1, 4 * 320, 640, 3)


def test_command_line_merge_clean_resize_look(tmp_path, capsys):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import prepare_dataset as cli

    data = _image(tmp_path / "d" / "x.png", (64, 48))
    (tmp_path / "d" / "x.txt").write_text("blonde_hair, 1girl")
    meta = tmp_path / "m.json"
    assert cli.main(["merge", str(data.parent), str(meta), "--caption_extension", ""]) == 0
    assert cli.main(["clean", str(meta), str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": {"tags": "blonde hair, 1girl"}}
    assert cli.main(["resize", str(data.parent), str(tmp_path / "r"), "--max_resolution", "32x32"]) == 0
    assert (tmp_path / "r" / "x+32x32.jpg").is_file()
    assert cli.main(["resize", str(data.parent), str(tmp_path / "r"), "--max_resolution", "32x32"]) == 1
    assert "already exist" in capsys.readouterr().err
    assert cli.main(["look", str(data.parent), "--sheet", str(tmp_path / "s.png"), "--resolution", "64",
                     "--histograms", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "1 images, 1 readable" in out and "training bucket: 64x64 1" in out and (tmp_path / "s.png").is_file()
    assert Image.open(tmp_path / "h.png").size == (640, 5 * 320)
