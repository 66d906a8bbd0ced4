"""Every problem of a dataset is reported in one error, grouped, with counts and names."""
import json
import re

import pytest
from training_data_helpers import CountingEncoder, write_image, write_text

from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData, subsets_from_folder_tree
from lllite_kit.training.data.errors import DatasetProblems, Problem


def _groups(message: str) -> dict[str, tuple[int | None, list[str]]]:
    """title -> (count in the header, listed names); the notes under "notes"."""
    groups, current = {}, None
    for line in message.splitlines()[1:]:
        header = re.match(r"^(\S.*) \((\d+)\): ", line)
        if line.startswith("  "):
            groups[current][1].append(line.strip())
        elif line.startswith("Also noted"):
            current = "notes"
            groups[current] = (None, [])
        elif header:
            current = header[1]
            groups[current] = (int(header[2]), [])
    return groups


def _broken(path):
    return write_text(path, "not an image")


def test_one_error_lists_every_problem_of_every_subset_dataset_and_guide_folder(tmp_path):
    dog, guides = tmp_path / "train" / "10_sks dog", tmp_path / "guides" / "10_sks dog"
    write_image(dog / "a.png", 64, 64)
    write_text(dog / "a.txt", "a dog")
    _broken(dog / "broken.png")
    write_image(dog / "b.png", 64, 64)
    write_text(dog / "b.txt", "  \n")  # empty caption
    write_text(dog / "orphan.txt", "no image has this name")
    write_image(dog / "c.png", 64, 64)  # no guide
    write_image(dog / "tiny.png", 16, 16)  # below bucket_reso_steps with bucket_no_upscale
    for name, size in (("a.png", 64), ("b.png", 64), ("broken.png", 64), ("stray.png", 64), ("tiny.png", 16)):
        write_image(guides / name, size, size)
    write_image(tmp_path / "train" / "2_cat" / "d.png", 64, 64)
    (tmp_path / "train" / "2_cat" / "d.txt").write_bytes(b"caf\xe9 latin-1")
    write_image(tmp_path / "guides" / "2_cat" / "d.png", 64, 64)
    write_image(tmp_path / "reg" / "1_dog" / "r.png", 64, 64)
    _broken(tmp_path / "reg" / "1_dog" / "rbroken.jpg")
    write_image(tmp_path / "meta" / "m1.png", 64, 64)
    md = write_text(tmp_path / "meta" / "md.json", json.dumps({"m1": {"caption": "x"}, "ghost": {"caption": "y"}}))

    subsets = subsets_from_folder_tree(tmp_path / "train", tmp_path / "reg", SubsetConfig(caption_extension=".txt"), tmp_path / "guides")
    buckets = dict(enable_bucket=True, bucket_no_upscale=True, bucket_reso_steps=32, min_bucket_reso=32, max_bucket_reso=128)
    datasets = [DatasetConfig(subsets=subsets, resolution=(64, 64), **buckets),
                DatasetConfig(subsets=[SubsetConfig(metadata_file=md)], resolution=(64, 64))]
    with pytest.raises(DatasetError) as e:
        TrainingData(datasets, encode_latents=CountingEncoder(), vae_id="t")

    message = str(e.value)
    lines = message.splitlines()
    assert lines[0] == (
        "11 dataset problems in 9 groups: Caption files without an image of the same basename (1); Empty caption files (1); "
        "Cannot read these images (2); Images without a guide image (1); Guide images without an image (1); "
        "Images smaller than bucket_reso_steps with bucket_no_upscale on (1); Caption files that are not UTF-8 text (1); "
        "Metadata entries whose image is not found (1); Subsets without guide images (2). Fix them all, then run again."
    )
    assert lines[1] == f"Paths below are relative to {tmp_path}"
    groups = _groups(message)
    assert groups.pop("notes") == (None, ["- 3 image(s) in train/10_sks dog have no .txt caption file; they use the class tokens 'sks dog'."])
    assert groups == {
        "Caption files without an image of the same basename": (1, ["- train/10_sks dog/orphan.txt"]),
        "Empty caption files": (1, ["- train/10_sks dog/b.txt"]),
        "Cannot read these images": (2, ["- train/10_sks dog/broken.png (not an image format PIL can read)",
                                         "- reg/1_dog/rbroken.jpg (not an image format PIL can read)"]),
        "Images without a guide image": (1, ["- train/10_sks dog/c.png"]),
        "Guide images without an image": (1, ["- guides/10_sks dog/stray.png"]),
        "Images smaller than bucket_reso_steps with bucket_no_upscale on": (1, ["- train/10_sks dog/tiny.png (16x16, bucket_reso_steps 32 px)"]),
        "Caption files that are not UTF-8 text": (1, ["- train/2_cat/d.txt"]),
        "Metadata entries whose image is not found": (1, ["- ghost (listed in meta/md.json, looked in meta)"]),
        "Subsets without guide images": (2, ["- reg/1_dog", "- meta/md.json"]),
    }
    # Each group says what to do.
    assert "Empty caption files (1): write a caption, or delete the file to use the class tokens." in lines


def test_folder_tree_problems_come_with_the_problems_of_the_well_named_folders(tmp_path):
    write_image(tmp_path / "train" / "loose.png", 32, 32)
    write_image(tmp_path / "train" / "sks dog" / "a.png", 32, 32)  # no repeats
    write_image(tmp_path / "train" / "0_cat" / "a.png", 32, 32)  # repeats < 1
    ok = tmp_path / "train" / "5_ok"
    write_image(ok / "a.png", 32, 32)
    _broken(ok / "b.webp")
    write_text(ok / "b.caption", "")
    with pytest.raises(DatasetError) as e:
        subsets_from_folder_tree(tmp_path / "train", tmp_path / "reg")
    assert _groups(str(e.value)) == {
        "Images directly in a training or regularization folder": (1, ["- train/loose.png"]),
        "Folders not named `<repeats>_<identifier> <class>` with repeats >= 1": (2, ["- train/0_cat", "- train/sks dog"]),
        "Folders and files that do not exist": (1, ["- reg (regularization folder)"]),
        "Empty caption files": (1, ["- train/5_ok/b.caption"]),
        "Cannot read these images": (1, ["- train/5_ok/b.webp (not an image format PIL can read)"]),
        "notes": (None, ["- 1 image(s) in train/5_ok have no .caption caption file; they use the class tokens 'ok'."]),
    }


def test_a_clean_tree_still_trains_after_its_notes(tmp_path):
    d = tmp_path / "train" / "3_sks"
    write_image(d / "a.png", 32, 32)
    write_image(d / "b.png", 32, 32)
    write_text(d / "a.caption", "a caption")
    (subset,) = subsets_from_folder_tree(tmp_path / "train")
    data = TrainingData([DatasetConfig(subsets=[subset], resolution=(32, 32))], encode_latents=CountingEncoder(), vae_id="t")
    assert data.num_train_images == 6


def test_groups_are_counted_deduplicated_and_cut_after_the_first_names():
    problems = DatasetProblems(shown=3)
    problems.raise_if_any()  # nothing found: no error
    many = Problem("Things", "fix them")
    for i in range(5):
        problems.add(many, f"t{i}", "why")
    problems.add(many, "t0", "why")  # the same problem found twice is listed once
    problems.add(Problem("Others", "do this"), "o")
    with pytest.raises(DatasetError) as e:
        problems.raise_if_any()
    assert str(e.value) == (
        "6 dataset problems in 2 groups: Things (5); Others (1). Fix them all, then run again.\n"
        "Things (5): fix them.\n  - t0 (why)\n  - t1 (why)\n  - t2 (why)\n  ... and 2 more\n"
        "Others (1): do this.\n  - o"
    )
