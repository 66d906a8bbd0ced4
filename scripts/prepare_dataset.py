"""Dataset preparation without the UI: the same library as the LLLite Kit/dataset nodes.

    python scripts/prepare_dataset.py merge DIR meta.json [--in_json old.json] [--caption_extension .caption] [--tags_extension .txt] [--full_path] [--clean]
    python scripts/prepare_dataset.py clean in.json out.json                (sd-scripts clean_captions_and_tags.py)
    python scripts/prepare_dataset.py edit DIR --caption_extension .txt [--clean tags] [--find A --replace B] [--prefix sks] [--write]
    python scripts/prepare_dataset.py resize SRC DST --max_resolution 512x512,384x384 [--divisible_by 8] [--interpolation area] [--save_as_png] [--copy_associated_files]
    python scripts/prepare_dataset.py caption DIR --model models/captioners/blip-image-captioning-large [--beam_search --num_beams 3] [--batch_size 8] [--caption_extension .caption]
    python scripts/prepare_dataset.py tag DIR --model models/taggers/wd-vit-tagger-v3 [--thresh 0.35] [--character_threshold 0.7] [--use_rating_tags] [--remove_underscore] [--frequency_tags]
    python scripts/prepare_dataset.py look DIR [--caption_extension .txt] [--resolution 1024] [--sheet sheet.png]
                                               [--histograms histograms.png]

Exit status: 0 done, 1 bad input (the message names it).
"""
import argparse
import sys
from pathlib import Path

from train import bootstrap_comfyui


def _write_args(p: argparse.ArgumentParser, extension: str) -> None:
    p.add_argument("--caption_extension", default=extension)
    p.add_argument("--if_exists", choices=("skip", "overwrite", "append"), default="skip",
                   help="an existing file: keep it (default), replace it, or add the new tags it lacks")


def _device():
    import torch

    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


def _load_images(folder: str, recursive: bool):
    from PIL import Image

    from lllite_kit.training.data_prep.files import list_images

    files = list_images(folder, recursive)
    loaded = []
    for f in files:
        with Image.open(f) as im:
            loaded.append(im.convert("RGB"))
    return files, loaded


def _write_all(files, texts, args) -> str:
    from lllite_kit.training.data_prep.files import write_beside

    written = [write_beside(f, t, args.caption_extension, args.if_exists) for f, t in zip(files, texts)]
    lines = [f"{f.name}: {t}" + ("" if w else " (existing file kept)") for f, t, w in zip(files, texts, written)]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="tool", required=True)

    p = sub.add_parser("merge", help="caption and tag files -> fine-tune metadata JSON (merge_captions/dd_tags_to_metadata)")
    p.add_argument("train_data_dir")
    p.add_argument("out_json")
    p.add_argument("--in_json", help="metadata to start from (default: out_json when it exists)")
    p.add_argument("--caption_extension", default=".caption", help="'' to skip captions")
    p.add_argument("--tags_extension", default=".txt", help="'' to skip tags")
    p.add_argument("--full_path", action="store_true", help="absolute paths as keys (several folders in one file)")
    p.add_argument("--recursive", action="store_true", help="subfolders too (needs --full_path)")
    p.add_argument("--clean", action="store_true", help="apply sd-scripts' cleaning rules")

    p = sub.add_parser("clean", help="sd-scripts clean_captions_and_tags.py on a metadata JSON")
    p.add_argument("in_json")
    p.add_argument("out_json")

    p = sub.add_parser("edit", help="clean / edit the caption files of a folder")
    p.add_argument("train_data_dir")
    p.add_argument("--caption_extension", default=".txt")
    p.add_argument("--clean", choices=("none", "caption", "tags"), default="none")
    p.add_argument("--find", default="")
    p.add_argument("--replace", default="")
    p.add_argument("--dedupe", action="store_true", help="drop repeated tags")
    p.add_argument("--first_tags", default="", help="comma-separated tags moved to the front")
    p.add_argument("--prefix", default="")
    p.add_argument("--suffix", default="")
    p.add_argument("--write", action="store_true", help="rewrite the files (default: print only)")

    p = sub.add_parser("resize", help="resize_images_to_resolution.py")
    p.add_argument("src_img_folder")
    p.add_argument("dst_img_folder")
    p.add_argument("--max_resolution", default="512x512,384x384,256x256,128x128")
    p.add_argument("--divisible_by", type=int, default=1)
    p.add_argument("--interpolation", choices=("area", "cubic", "lanczos4", "nearest", "linear", "box"))
    p.add_argument("--save_as_png", action="store_true")
    p.add_argument("--copy_associated_files", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace files already in the destination")

    p = sub.add_parser("caption", help="BLIP / GIT captions (make_captions.py, make_captions_by_git.py)")
    p.add_argument("train_data_dir")
    p.add_argument("--model", required=True, help="a BLIP or GIT folder as published (e.g. .../blip-image-captioning-large)")
    p.add_argument("--beam_search", action="store_true", help="beam search (default: nucleus sampling)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (make_captions_by_git.py)")
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--top_p", type=float, default=0.9)
    p.add_argument("--max_length", type=int, default=75)
    p.add_argument("--min_length", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--remove_words", action="store_true", help="GIT: drop read-aloud text")
    p.add_argument("--recursive", action="store_true")
    _write_args(p, ".caption")

    p = sub.add_parser("tag", help="WD14 tags (tag_images_by_wd14_tagger.py)")
    p.add_argument("train_data_dir")
    p.add_argument("--model", required=True, help="a tagger folder as published (e.g. .../wd-vit-tagger-v3)")
    p.add_argument("--thresh", type=float, default=0.35)
    p.add_argument("--general_threshold", type=float, help="default: --thresh")
    p.add_argument("--character_threshold", type=float, help="default: --thresh; above 1: none")
    p.add_argument("--use_rating_tags", action="store_true")
    p.add_argument("--use_rating_tags_as_last_tag", action="store_true")
    p.add_argument("--character_tags_first", action="store_true")
    p.add_argument("--character_tag_expand", action="store_true")
    p.add_argument("--remove_underscore", action="store_true")
    p.add_argument("--undesired_tags", default="")
    p.add_argument("--always_first_tags", default="")
    p.add_argument("--caption_separator", default=", ")
    p.add_argument("--tag_replacement", default="", help=r"source1,target1;source2,target2 (\, and \; inside a tag)")
    p.add_argument("--output_path", help="write {image: {tags, image_size}} JSON (.jsonl: one line per image) "
                                         "instead of the tag files, as sd-scripts")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--frequency_tags", action="store_true", help="print the tag frequency table")
    p.add_argument("--recursive", action="store_true")
    _write_args(p, ".txt")
    p.add_argument("--append_tags", action="store_true", help="same as --if_exists append")

    p = sub.add_parser("look", help="problems report and contact sheet")
    p.add_argument("train_data_dir")
    p.add_argument("--caption_extension", default=".txt")
    p.add_argument("--resolution", type=int, default=0, help="report images with a smaller area (0: no check)")
    p.add_argument("--sheet", help="write the contact sheet to this PNG")
    p.add_argument("--histograms", help="write the histograms (size, aspect, bucket, caption length, tags) to this PNG")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--thumb_size", type=int, default=256)
    return parser.parse_args(argv)


def run(args) -> str:
    from PIL import Image

    from lllite_kit.files.atomic import write_atomic
    from lllite_kit.training.data_prep import cleaning, resize
    from lllite_kit.training.data_prep.files import list_images, read_beside, write_beside
    from lllite_kit.training.data_prep.look import contact_sheet, dataset_images, histogram_image, histograms, inspect
    from lllite_kit.training.data_prep.metadata import merge_metadata, read_metadata, write_metadata

    if args.tool == "merge":
        r = merge_metadata(args.train_data_dir, args.out_json, args.in_json, args.caption_extension or None,
                           args.tags_extension or None, args.full_path, args.recursive, args.clean)
        lines = [f"{args.out_json}: {len(r.metadata)} entries"]
        lines += [f"{k}: {n} merged, {len(r.missing[k])} images without one" for k, n in r.merged.items()]
        return "\n".join(lines)
    if args.tool == "clean":
        write_metadata(args.out_json, cleaning.clean_metadata(read_metadata(args.in_json)))
        return f"{args.out_json}: written"
    if args.tool == "edit":
        first = [t.strip() for t in args.first_tags.split(",") if t.strip()]
        clean = {"none": lambda t: t, "caption": cleaning.clean_caption, "tags": cleaning.clean_tags}[args.clean]
        out = []
        for image in list_images(args.train_data_dir):
            text = read_beside(image, args.caption_extension)
            if text is None:
                continue
            new = cleaning.edit_caption(clean(text), args.find, args.replace, args.prefix, args.suffix, args.dedupe, first)
            if args.write and new != text:
                write_beside(image, new, args.caption_extension, "overwrite")
            out.append(f"{image.name}: {new}")
        return "\n".join(out)
    if args.tool == "resize":
        r = resize.resize_folder(args.src_img_folder, args.dst_img_folder, args.max_resolution, args.divisible_by,
                                 args.interpolation, args.save_as_png, args.copy_associated_files, args.overwrite)
        return f"{args.dst_img_folder}: {len(r.written)} images written, {len(r.copied)} files copied"
    if args.tool == "caption":
        from lllite_kit.training.data_prep.captioner import REQUIRED_FILES, Captioner, CaptionOptions
        from lllite_kit.training.data_prep.model_files import CAPTIONERS, locate

        model = Path(args.model)
        folder = locate(model.name, [str(model.parent)], REQUIRED_FILES, CAPTIONERS, "captioners")
        decoding = "greedy" if args.greedy else "beam search" if args.beam_search else "nucleus sampling"
        options = CaptionOptions(decoding, args.num_beams, args.top_p, args.max_length, args.min_length, args.seed,
                                 args.batch_size, remove_words=args.remove_words)
        files, images = _load_images(args.train_data_dir, args.recursive)
        captions = Captioner(folder, *_device()).caption(images, options)
        return _write_all(files, captions, args)
    if args.tool == "tag":
        from lllite_kit.training.data_prep.model_files import TAGGERS, locate
        from lllite_kit.training.data_prep.files import with_existing
        from lllite_kit.training.data_prep.tagger import REQUIRED_FILES, Tagger, TagOptions, tags_metadata

        model = Path(args.model)
        folder = locate(model.name, [str(model.parent)], REQUIRED_FILES, TAGGERS, "taggers")
        general = args.thresh if args.general_threshold is None else args.general_threshold
        character = args.thresh if args.character_threshold is None else args.character_threshold
        options = TagOptions(general, character, args.use_rating_tags, args.use_rating_tags_as_last_tag,
                             args.character_tags_first, args.character_tag_expand, args.remove_underscore,
                             args.undesired_tags, args.always_first_tags, args.caption_separator, args.batch_size,
                             args.tag_replacement)
        if args.append_tags:
            args.if_exists = "append"
        files, images = _load_images(args.train_data_dir, args.recursive)
        result = Tagger(folder, *_device()).tag(images, options)
        texts = [args.caption_separator.join(t) for t in result.tags]
        if args.output_path:
            if args.if_exists == "append":
                texts = [with_existing(f, t, args.caption_extension, args.caption_separator) for f, t in zip(files, texts)]
            path = Path(args.output_path)
            write_atomic(path, tags_metadata([str(f) for f in files], texts, [im.size for im in images],
                                             path.suffix == ".jsonl"), "tag metadata")
            out = f"{path}: {len(texts)} entries"
        else:
            out = _write_all(files, texts, args)
        if args.frequency_tags:
            out += "\nTag frequencies:\n" + "\n".join(f"{t}: {n}" for t, n in result.frequency_table())
        return out
    images, subsets = dataset_images(Path(args.train_data_dir))
    report = inspect(images, args.caption_extension, (args.resolution, args.resolution) if args.resolution else None,
                     subsets=subsets)
    if args.sheet:
        sheet = contact_sheet(report, args.columns, args.thumb_size, resolution=args.resolution or None)
        write_atomic(Path(args.sheet), lambda tmp: sheet.save(tmp, format="PNG"), "image")
    counts = histograms(report, args.resolution or None)
    if args.histograms:
        chart = Image.fromarray((histogram_image(counts)[0].numpy() * 255).round().astype("uint8"))
        write_atomic(Path(args.histograms), lambda tmp: chart.save(tmp, format="PNG"), "image")
    return f"{report.text()}\n\n{counts.text()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    bootstrap_comfyui()
    try:
        print(run(args))
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:  # bad input: the message says which
        print(f"prepare_dataset {args.tool}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
