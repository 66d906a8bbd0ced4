"""sd-scripts folder trees, caption files, fine-tune metadata, and the errors that name files."""
import json

import pytest
from training_data_helpers import write_image, write_text

from lllite_kit.training.data import DatasetError, SubsetConfig, subsets_from_folder_tree
from lllite_kit.training.data.folders import scan_image_dir
from lllite_kit.training.data.metadata import scan_metadata


def test_tree_gives_repeats_class_tokens_and_reg(tmp_path):
    write_image(tmp_path / "train" / "10_sks dog" / "a.png", 64, 48)
    write_image(tmp_path / "train" / "3_xyz cat" / "b.jpg", 32, 32)
    write_image(tmp_path / "reg" / "1_dog" / "r.webp", 64, 64)
    subsets = subsets_from_folder_tree(tmp_path / "train", tmp_path / "reg", template=SubsetConfig(caption_extension=".txt", flip_aug=True))
    got = [(s.image_dir.name, s.num_repeats, s.class_tokens, s.is_reg, s.caption_extension, s.flip_aug) for s in subsets]
    assert got == [
        ("10_sks dog", 10, "sks dog", False, ".txt", True),
        ("3_xyz cat", 3, "xyz cat", False, ".txt", True),
        ("1_dog", 1, "dog", True, ".txt", True),
    ]


def test_caption_file_replaces_folder_caption(tmp_path):
    d = tmp_path / "5_sks dog"
    write_image(d / "a.png", 40, 40)
    write_image(d / "b.PNG", 40, 56)
    write_text(d / "a.txt", "\n  a photo of sks dog, grass  \nsecond line ignored\n")
    write_text(d / "b.caption", "not this extension")
    items = scan_image_dir(SubsetConfig(image_dir=d, caption_extension="txt", class_tokens="sks dog"))
    assert [(i.name.split("/")[-1], i.caption, i.size) for i in items] == [("a.png", "a photo of sks dog, grass", (40, 40)), ("b.PNG", None, (40, 56))]


def test_guide_dir_mirrors_the_tree(tmp_path):
    write_image(tmp_path / "train" / "2_sks" / "a.png", 32, 32)
    write_image(tmp_path / "guides" / "2_sks" / "a.png", 32, 32, seed=1)
    (subset,) = subsets_from_folder_tree(tmp_path / "train", conditioning_dir=tmp_path / "guides")
    assert subset.conditioning_data_dir == tmp_path / "guides" / "2_sks"
    (item,) = scan_image_dir(subset)
    assert item.guide == tmp_path / "guides" / "2_sks" / "a.png"


def test_missing_train_dir(tmp_path):
    with pytest.raises(DatasetError, match=rf"^Folders and files that do not exist \(1\).*\nPaths below are relative to {tmp_path}\n  - nope \(training folder\)$"):
        subsets_from_folder_tree(tmp_path / "nope")


def test_missing_reg_dir(tmp_path):
    write_image(tmp_path / "train" / "1_a" / "x.png", 32, 32)
    with pytest.raises(DatasetError, match=r"do not exist \(1\).*\n.*\n  - reg \(regularization folder\)$"):
        subsets_from_folder_tree(tmp_path / "train", tmp_path / "reg")


def test_images_directly_in_train_dir_are_named(tmp_path):
    write_image(tmp_path / "train" / "loose.png", 32, 32)
    with pytest.raises(DatasetError) as e:
        subsets_from_folder_tree(tmp_path / "train")
    assert "loose.png" in str(e.value) and "<repeats>_<identifier> <class>" in str(e.value)


def test_badly_named_folders_are_listed(tmp_path):
    write_image(tmp_path / "train" / "10 sks dog" / "a.png", 32, 32)
    write_image(tmp_path / "train" / "0_cat" / "a.png", 32, 32)
    write_image(tmp_path / "train" / "2_ok" / "a.png", 32, 32)
    with pytest.raises(DatasetError) as e:
        subsets_from_folder_tree(tmp_path / "train")
    msg = str(e.value)
    assert "10 sks dog" in msg and "0_cat" in msg and "2_ok" not in msg


def test_train_dir_without_subfolders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"folders without subfolders \(1\): put the images in subfolders named `<repeats>_<identifier> <class>`.*\n.*\n  - train$"):
        subsets_from_folder_tree(tmp_path / "train")


def test_empty_image_folder(tmp_path):
    d = tmp_path / "1_x"
    write_text(d / "notes.md", "hi")
    with pytest.raises(DatasetError, match=r"Image folders without images \(1\).*\n.*\n  - 1_x \(it holds 1 other file\(s\), e\.g\. notes\.md\)$"):
        scan_image_dir(SubsetConfig(image_dir=d, class_tokens="x"))


def test_missing_image_dir(tmp_path):
    with pytest.raises(DatasetError, match=rf"do not exist \(1\).*\nPaths below are relative to {tmp_path}\n  - gone \(image folder\)$"):
        scan_image_dir(SubsetConfig(image_dir=tmp_path / "gone", class_tokens="x"))


def test_captions_without_images_are_listed(tmp_path):
    d = tmp_path / "1_x"
    write_image(d / "a.png", 32, 32)
    write_text(d / "a.caption", "ok")
    write_text(d / "orphan.caption", "no image")
    write_text(d / "other.caption", "no image")
    with pytest.raises(DatasetError) as e:
        scan_image_dir(SubsetConfig(image_dir=d))
    msg = str(e.value)
    assert "without an image" in msg and "orphan.caption" in msg and "other.caption" in msg and "a.caption" not in msg


def test_images_without_captions_and_no_class_tokens_are_listed_with_extension_hint(tmp_path):
    d = tmp_path / "captions"
    write_image(d / "a.png", 32, 32)
    write_image(d / "b.png", 32, 32)
    write_text(d / "a.txt", "a caption")
    write_text(d / "b.txt", "b caption")
    with pytest.raises(DatasetError) as e:
        scan_image_dir(SubsetConfig(image_dir=d))  # default extension .caption
    msg = str(e.value)
    assert "a.png" in msg and "b.png" in msg and "set caption_extension" in msg and ".txt" in msg


def test_unreadable_images_are_listed(tmp_path):
    d = tmp_path / "1_x"
    write_image(d / "good.png", 32, 32)
    write_text(d / "broken.png", "this is not a png")
    write_text(d / "broken2.jpg", "")
    with pytest.raises(DatasetError) as e:
        scan_image_dir(SubsetConfig(image_dir=d, class_tokens="x"))
    msg = str(e.value)
    assert "Cannot read" in msg and "broken.png" in msg and "broken2.jpg" in msg and "good.png" not in msg


def test_empty_caption_file(tmp_path):
    d = tmp_path / "1_x"
    write_image(d / "a.png", 32, 32)
    write_text(d / "a.caption", "  \n")
    with pytest.raises(DatasetError, match=r"^Empty caption files \(1\).*\n.*1_x\n  - a\.caption$"):
        scan_image_dir(SubsetConfig(image_dir=d, class_tokens="x"))


def test_metadata_file(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 32, 32)
    write_image(tmp_path / "imgs" / "b.jpg", 32, 48)
    md = tmp_path / "imgs" / "md.json"
    write_text(md, json.dumps({"a": {"caption": "a cat", "tags": "sitting, indoors"}, "b.jpg": {"tags": "dog"}}))
    items = scan_metadata(SubsetConfig(metadata_file=md))
    assert [(i.name.split("/")[-1], i.caption, i.size) for i in items] == [("a.png", "a cat, sitting, indoors", (32, 32)), ("b.jpg", "dog", (32, 48))]


def test_metadata_keys_without_images_are_listed(tmp_path):
    write_image(tmp_path / "a.png", 32, 32)
    md = write_text(tmp_path / "md.json", json.dumps({"a": {"caption": "x"}, "ghost": {"caption": "y"}, "ghost2": {"caption": "z"}}))
    with pytest.raises(DatasetError) as e:
        scan_metadata(SubsetConfig(metadata_file=md))
    assert str(e.value).endswith(f"  - ghost (listed in md.json, looked in {tmp_path})\n  - ghost2 (listed in md.json, looked in {tmp_path})")
