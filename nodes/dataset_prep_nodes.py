"""Dataset preparation nodes (LLLite Kit/dataset): caption/tag files, cleaning, fine-tune
metadata, resizing, a look at the dataset. Forms over training/data_prep (the library
scripts/prepare_dataset.py runs too). Folders typed relative are read from ComfyUI's input
folder; files are written beside the images (caption files, only when asked) or inside
ComfyUI's output/model folders."""
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..files.roots import check_writable
from ..training.data_prep import cleaning, resize
from ..training.data_prep.captioner import DECODING, CaptionOptions, load_captioner
from ..training.data_prep.files import beside, list_images, read_beside, with_existing, write_beside
from ..training.data_prep.look import contact_sheet, dataset_images, histogram_image, histograms, inspect
from ..training.data_prep.metadata import merge_metadata
from ..training.data_prep.model_files import CAPTIONERS, TAGGERS, ModelFileMissing, folder_choices, locate
from ..training.data_prep.tagger import TagOptions, load_tagger, parse_tag_replacement, tags_metadata
from .model_folders import register_model_folders
from .training_form import Dataset, resolve_path

CATEGORY = "LLLite Kit/dataset"
CLEAN_RULES = ("none", "caption rules", "tag rules")


def _image_dir_input(default: str = "training/my_dataset") -> io.String.Input:
    return io.String.Input("image_dir", default=default,
                           tooltip="Folder of images; a relative path is read from ComfyUI's input folder.")


def _extension_input(name: str, default: str, what: str) -> io.String.Input:
    return io.String.Input(name, default=default, tooltip=f"Extension of the {what} files beside the images.")


def _output_path(value: str, what: str) -> Path:
    """A path to write: relative ones go into ComfyUI's output folder; it must lie inside
    ComfyUI's output, temp or model folders."""
    path = Path(value.strip()).expanduser()
    if not value.strip():
        raise ValueError(f"{what}: no path given.")
    if not path.is_absolute():
        path = Path(folder_paths.get_output_directory()) / path
    check_writable(path.parent if path.suffix else path, what)
    return path


def _image_tensor(pil) -> torch.Tensor:
    import comfy.model_management as mm

    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)[None].to(mm.intermediate_device())


class EditCaptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_EditCaptions", display_name="Clean / Edit Captions (LLLite Kit)", category=CATEGORY,
            description="Cleans and edits the caption or tag files of a folder: sd-scripts' cleaning rules, "
                        "find/replace, duplicate tags, tags moved to the front, prefix/suffix. Shows the result; "
                        "writes the files back only when write_files is on.",
            inputs=[_image_dir_input(), _extension_input("caption_extension", ".txt", "caption/tag"),
                    io.Combo.Input("clean", options=list(CLEAN_RULES), default="none",
                                   tooltip="sd-scripts' clean_captions_and_tags.py: caption rules (woman/lady/anime girl "
                                           "-> girl ...) or tag rules (underscores, DeepDanbooru rating, group-picture "
                                           "attributes, 'shirt' beside 'white shirt')."),
                    io.String.Input("find", default="", tooltip="Plain text to replace (empty: none)."),
                    io.String.Input("replace", default="", tooltip="What `find` becomes."),
                    io.Boolean.Input("dedupe_tags", default=True, tooltip="Drop repeated tags, keeping the first."),
                    io.String.Input("first_tags", default="",
                                    tooltip="Comma-separated tags moved to the front in this order (e.g. the trigger "
                                            "word and what keep_tokens should keep)."),
                    io.String.Input("prefix", default="", tooltip="Tag added at the front (e.g. a trigger word)."),
                    io.String.Input("suffix", default="", tooltip="Tag added at the end."),
                    io.Boolean.Input("write_files", default=False,
                                     tooltip="Replace the caption files with the edited text (atomic). Off: preview only.")],
            outputs=[io.String.Output(display_name="captions", is_output_list=True), _folder_output()],
            is_output_node=True)

    @classmethod
    def execute(cls, image_dir, caption_extension, clean, find, replace, dedupe_tags, first_tags, prefix, suffix,
                write_files) -> io.NodeOutput:
        folder = resolve_path(image_dir, "image_dir")
        first = [t.strip() for t in first_tags.split(",") if t.strip()]
        captions, changed = [], 0
        for image in list_images(folder):
            text = read_beside(image, caption_extension)
            if text is None:
                continue
            new = {"none": text, "caption rules": cleaning.clean_caption(text),
                   "tag rules": cleaning.clean_tags(text)}[clean]
            new = cleaning.edit_caption(new, find, replace, prefix, suffix, dedupe_tags, first)
            if write_files and new != text:
                write_beside(image, new, caption_extension, "overwrite")
                changed += 1
            captions.append(new)
        report = f"{len(captions)} captions" + (f", {changed} files rewritten" if write_files else " (preview; nothing written)")
        return io.NodeOutput(captions, str(folder), ui=ui.PreviewText(report + "\n\n" + "\n".join(captions[:50])))


class MergeMetadata(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_MergeMetadata", display_name="Captions + Tags to Metadata JSON (LLLite Kit)",
            category=CATEGORY,
            description="sd-scripts' merge_captions_to_metadata.py and merge_dd_tags_to_metadata.py in one: the "
                        "fine-tune metadata JSON a dataset's metadata_file reads. Entries already in the file are kept.",
            inputs=[_image_dir_input(),
                    io.String.Input("out_json", default="metadata/meta_cap.json",
                                    tooltip="JSON to write; relative paths go into ComfyUI's output folder. When it "
                                            "exists and in_json is empty it is read first and merged into."),
                    io.String.Input("in_json", default="", tooltip="Existing metadata to start from (optional)."),
                    io.String.Input("caption_extension", default=".caption",
                                    tooltip="Caption files to merge as 'caption' (empty: none)."),
                    io.String.Input("tags_extension", default=".txt", tooltip="Tag files to merge as 'tags' (empty: none)."),
                    io.Boolean.Input("full_path", default=False,
                                     tooltip="Keys are absolute paths (several folders in one file); off: file stems."),
                    io.Boolean.Input("recursive", default=False, tooltip="Subfolders too (needs full_path)."),
                    io.Boolean.Input("clean", default=False, tooltip="Apply sd-scripts' caption and tag cleaning rules.")],
            outputs=[io.String.Output(display_name="metadata_file"), io.String.Output(display_name="report")],
            is_output_node=True)

    @classmethod
    def execute(cls, image_dir, out_json, in_json, caption_extension, tags_extension, full_path, recursive,
                clean) -> io.NodeOutput:
        folder = resolve_path(image_dir, "image_dir")
        out = _output_path(out_json, "out_json")
        source = resolve_path(in_json, "in_json") if in_json.strip() else None
        result = merge_metadata(folder, out, source, caption_extension.strip() or None, tags_extension.strip() or None,
                                full_path, recursive, clean)
        lines = [f"{out}: {len(result.metadata)} entries"]
        for name, count in result.merged.items():
            missing = result.missing[name]
            lines.append(f"{name}: {count} merged" + (f", {len(missing)} images without one: "
                                                      + ", ".join(p.name for p in missing[:20]) if missing else ""))
        report = "\n".join(lines)
        return io.NodeOutput(str(out), report, ui=ui.PreviewText(report))


class DatasetFromMetadata(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DatasetFromMetadata", display_name="Training Dataset from Metadata JSON (LLLite Kit)",
            category=CATEGORY,
            description="A fine-tune subset: the images a metadata JSON lists (sd-scripts' metadata_file, e.g. from "
                        "Captions + Tags to Metadata JSON), trained on their caption and tags joined with ', '.",
            inputs=[io.String.Input("metadata_file", default="metadata/meta_cap.json",
                                    tooltip="The JSON; a relative path is read from ComfyUI's output folder (where "
                                            "Captions + Tags to Metadata JSON writes), else from its input folder."),
                    io.String.Input("image_dir", default="", tooltip="Where keys that are not absolute paths are "
                                    "looked up (relative: ComfyUI's input folder); empty: the JSON's folder."),
                    io.Int.Input("num_repeats", default=1, min=1, max=1000),
                    io.Int.Input("resolution", default=1024, min=64, max=4096, step=8,
                                 tooltip="Training resolution (side of the square area)."),
                    io.Int.Input("batch_size", default=1, min=1, max=64),
                    io.Boolean.Input("enable_bucket", default=True),
                    io.Boolean.Input("flip_aug", default=False),
                    io.Boolean.Input("shuffle_caption", default=False),
                    io.Int.Input("keep_tokens", default=0, min=0, max=64)],
            outputs=[Dataset.Output(display_name="dataset")])

    @classmethod
    def execute(cls, metadata_file, image_dir, num_repeats, resolution, batch_size, enable_bucket, flip_aug,
                shuffle_caption, keep_tokens) -> io.NodeOutput:
        from ..training.data.config import DatasetConfig, SubsetConfig
        from .training_nodes import _bucket_options

        name = metadata_file.strip()
        written = Path(folder_paths.get_output_directory()) / name
        relative_output = name and not Path(name).is_absolute() and written.is_file()
        meta = written if relative_output else resolve_path(metadata_file, "metadata_file")
        subset = SubsetConfig(metadata_file=meta, image_dir=resolve_path(image_dir, "image_dir") if image_dir.strip() else None,
                              num_repeats=num_repeats, flip_aug=flip_aug, shuffle_caption=shuffle_caption,
                              keep_tokens=keep_tokens)
        return io.NodeOutput([DatasetConfig(subsets=[subset], **_bucket_options(resolution, batch_size, enable_bucket))])


class ResizeImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_ResizeImages", display_name="Resize Images to Resolutions (LLLite Kit)", category=CATEGORY,
            description="sd-scripts' resize_images_to_resolution.py: every image shrunk to at most each area "
                        "(aspect kept), center-cropped to sides divisible by divisible_by, saved as name+WxH.",
            inputs=[io.String.Input("src_dir", default="training/my_dataset",
                                    tooltip="Folder of images; relative paths are read from ComfyUI's input folder."),
                    io.String.Input("dst_dir", default="resized/my_dataset",
                                    tooltip="Folder to write; relative paths go into ComfyUI's output folder."),
                    io.String.Input("max_resolution", default="512x512,384x384,256x256,128x128",
                                    tooltip="Target areas, comma-separated WxH."),
                    io.Int.Input("divisible_by", default=1, min=1, max=256, tooltip="Sides cropped to multiples of this."),
                    io.Combo.Input("interpolation", options=["auto", *resize.INTERPOLATIONS], default="auto",
                                   tooltip="auto: area (the sd-scripts default when shrinking)."),
                    io.Boolean.Input("save_as_png", default=False, tooltip="PNG; off: JPEG at quality 100."),
                    io.Boolean.Input("copy_associated_files", default=True,
                                     tooltip="Copy name.txt/.caption... as name+WxH.txt beside each resized image."),
                    io.Boolean.Input("overwrite", default=False,
                                     tooltip="Replace files already in dst_dir; off: refuses before writing anything.")],
            outputs=[io.String.Output(display_name="dst_dir")], is_output_node=True)

    @classmethod
    def execute(cls, src_dir, dst_dir, max_resolution, divisible_by, interpolation, save_as_png,
                copy_associated_files, overwrite) -> io.NodeOutput:
        import comfy.utils

        src = resolve_path(src_dir, "src_dir")
        dst = _output_path(dst_dir, "dst_dir")
        bar = comfy.utils.ProgressBar(1)
        result = resize.resize_folder(src, dst, max_resolution, divisible_by, None if interpolation == "auto" else interpolation,
                                      save_as_png, copy_associated_files, overwrite,
                                      progress=lambda i, n: bar.update_absolute(i, n))
        report = f"{dst}: {len(result.written)} images written, {len(result.copied)} files copied"
        return io.NodeOutput(str(dst), ui=ui.PreviewText(report))


class LookAtDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_LookAtDataset", display_name="Look at Dataset (LLLite Kit)", category=CATEGORY,
            description="A contact sheet of a folder (each image with its size, training bucket and caption), a report (images per subset "
                        "with repeats, unreadable images, missing or empty captions, images below the training area, "
                        "near-duplicates) and histograms: images x repeats per subset, image size, aspect ratio, "
                        "training bucket, caption length, tag frequency.",
            inputs=[io.String.Input("image_dir", default="training/my_dataset",
                                    tooltip="Folder of images, or an sd-scripts tree (<repeats>_<name> subfolders, "
                                            "counted per subset); a relative path is read from ComfyUI's input folder."),
                    _extension_input("caption_extension", ".txt", "caption"),
                    io.Int.Input("resolution", default=1024, min=0, max=8192,
                                 tooltip="Training resolution; images with a smaller area are reported, and the bucket "
                                         "histogram places images as enable_bucket would (steps 64, from a quarter to "
                                         "twice this). 0: neither."),
                    io.Int.Input("columns", default=4, min=1, max=32),
                    io.Int.Input("thumb_size", default=256, min=32, max=1024),
                    io.Int.Input("max_images", default=64, min=1, max=4096, tooltip="Images on the sheet (the report counts all).")],
            outputs=[io.Image.Output(display_name="contact_sheet"), io.String.Output(display_name="report"),
                     io.Image.Output(display_name="histograms")],
            is_output_node=True)

    @classmethod
    def execute(cls, image_dir, caption_extension, resolution, columns, thumb_size, max_images) -> io.NodeOutput:
        folder = resolve_path(image_dir, "image_dir")
        beside(folder / "x", caption_extension)  # a bad extension fails before any reading
        images, subsets = dataset_images(folder)
        report = inspect(images, caption_extension, (resolution, resolution) if resolution else None, subsets=subsets)
        shown = type(report)(report.entries[:max_images])
        sheet = _image_tensor(contact_sheet(shown, columns, thumb_size, resolution=resolution or None))
        counts = histograms(report, resolution or None)
        text = f"{report.text()}\n\n{counts.text()}"
        return io.NodeOutput(sheet, text, histogram_image(counts), ui=ui.PreviewText(text))


def _model_dirs(kind: str) -> list[str]:
    register_model_folders()
    return folder_paths.get_folder_paths(kind)


def _model_found(model: str | None, kind: str, required, known) -> bool | str:
    """validate_inputs of a node reading a model folder: True, or the missing-file message."""
    if model is None:
        return True
    try:
        locate(model, _model_dirs(kind), required, known, kind)
    except ModelFileMissing as e:
        return str(e)
    return True


def _device_dtype():
    import comfy.model_management as mm

    device = mm.get_torch_device()
    return device, torch.float16 if device.type == "cuda" else torch.float32


def _images(image_dir: str | None, images: torch.Tensor | None) -> tuple[list, list[Path] | None]:
    """(PIL images, their files or None): the IMAGE input when linked, else the folder's files."""
    from PIL import Image

    if images is not None:
        pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(p) for p in pixels], None
    files = list_images(resolve_path(image_dir or "", "image_dir"))
    loaded = []
    for f in files:
        with Image.open(f) as im:
            loaded.append(im.convert("RGB"))
    return loaded, files


def _progress_hooks(total: int):
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(1, total))
    return (lambda done, n: bar.update_absolute(done, n)), comfy.model_management.throw_exception_if_processing_interrupted


def _write_results(files: list[Path] | None, texts: list[str], write_files: bool, extension: str, if_exists: str) -> str:
    if files is None or not write_files:
        return "nothing written"
    written = [write_beside(f, t, extension, if_exists) for f, t in zip(files, texts)]
    kept = sum(w is None for w in written)
    return f"{len(written) - kept} {extension} files written" + (f", {kept} existing kept" if kept else "")


def _folder_output() -> io.String.Output:
    return io.String.Output(display_name="image_dir", tooltip="The folder read, once its files are written: link it "
                            "to the next dataset node's image_dir so that node runs after this one.")


def _folder(files: list[Path] | None, image_dir: str | None) -> str:
    return str(resolve_path(image_dir or "", "image_dir")) if files is not None else ""


def _write_inputs(extension: str) -> list:
    return [io.Boolean.Input("write_files", default=False, tooltip="Write a file beside each image (atomic)."),
            io.String.Input("caption_extension", default=extension, tooltip="Extension of the files written."),
            io.Combo.Input("if_exists", options=["skip", "overwrite", "append"], default="skip",
                           tooltip="When the file exists: keep it (default), replace it, or add the new tags after "
                                   "its own (only those it lacks).")]


class CaptionImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_CaptionImages", display_name="Caption Images, BLIP / GIT (LLLite Kit)", category=CATEGORY,
            description="Captions with BLIP or GIT from a folder in models/captioners (the published repository's "
                        "files; nothing is downloaded), sd-scripts' make_captions options, batched.",
            inputs=[io.Combo.Input("model", options=folder_choices(CAPTIONERS, _model_dirs("captioners")),
                                   tooltip="Folder in models/captioners named as its repository "
                                           "(Salesforce/blip-image-captioning-large -> blip-image-captioning-large)."),
                    io.String.Input("image_dir", default="training/my_dataset", optional=True,
                                    tooltip="Folder of images (relative: ComfyUI's input folder); unused when images is linked."),
                    io.Image.Input("images", optional=True, tooltip="Images to caption instead of a folder (nothing is written)."),
                    io.Combo.Input("decoding", options=list(DECODING), default=DECODING[0],
                                   tooltip="nucleus sampling (make_captions.py default), beam search (--beam_search), "
                                           "greedy (make_captions_by_git.py)."),
                    io.Int.Input("num_beams", default=1, min=1, max=16, tooltip="Beams in beam search."),
                    io.Float.Input("top_p", default=0.9, min=0.0, max=1.0, step=0.01, tooltip="Nucleus sampling's top_p."),
                    io.Int.Input("max_length", default=75, min=1, max=512, tooltip="Longest caption in tokens."),
                    io.Int.Input("min_length", default=5, min=0, max=512, tooltip="Shortest caption in tokens."),
                    io.Int.Input("seed", default=42, min=0, max=2**63 - 1, tooltip="Sampling seed (set once per run)."),
                    io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Images per generate call."),
                    io.String.Input("blip_prompt", default="a picture of ", advanced=True,
                                    tooltip="BLIP's text prompt (removed from the caption), as sd-scripts uses."),
                    io.Boolean.Input("git_remove_words", default=False, advanced=True,
                                     tooltip="GIT: drop read-aloud text ('with the words ...'), make_captions_by_git.py --remove_words."),
                    *_write_inputs(".caption")],
            outputs=[io.String.Output(display_name="captions", is_output_list=True), _folder_output(),
                     io.String.Output(display_name="caption_lines",
                                      tooltip="The captions as one text, a line per image: link it to Training Dataset "
                                              "from Images' captions to train on captioned in-graph images.")],
            is_output_node=True)

    @classmethod
    def validate_inputs(cls, model=None) -> bool | str:
        from ..training.data_prep.captioner import REQUIRED_FILES

        return _model_found(model, "captioners", REQUIRED_FILES, CAPTIONERS)

    @classmethod
    def execute(cls, model, decoding, num_beams, top_p, max_length, min_length, seed, batch_size, blip_prompt,
                git_remove_words, write_files, caption_extension, if_exists, image_dir=None, images=None) -> io.NodeOutput:
        if write_files:
            beside(Path("x"), caption_extension)  # a bad extension fails before any work
        captioner = load_captioner(model, _model_dirs("captioners"), *_device_dtype())
        pictures, files = _images(image_dir, images)
        options = CaptionOptions(decoding, num_beams, top_p, max_length, min_length, seed, batch_size, blip_prompt,
                                 git_remove_words)
        captions = captioner.caption(pictures, options, *_progress_hooks(len(pictures)))
        report = _write_results(files, captions, write_files, caption_extension, if_exists)
        names = [f.name for f in files] if files else [f"images[{i}]" for i in range(len(captions))]
        lines = "\n".join(" ".join(c.split()) for c in captions)  # one line each, whatever the model wrote
        return io.NodeOutput(captions, _folder(files, image_dir), lines, ui=ui.PreviewText(report + "\n\n" + "\n".join(
            f"{n}: {c}" for n, c in list(zip(names, captions))[:50])))


class TagImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TagImages", display_name="Tag Images, WD14 (LLLite Kit)", category=CATEGORY,
            description="Danbooru tags from a WD14 tagger folder in models/taggers (SmilingWolf's v3: model.safetensors + "
                        "config.json + selected_tags.csv, run with timm; v2 model.onnx needs onnxruntime), with "
                        "sd-scripts' tag_images_by_wd14_tagger.py options, batched, and a tag frequency table and chart.",
            inputs=[io.Combo.Input("model", options=folder_choices(TAGGERS, _model_dirs("taggers")),
                                   tooltip="Folder in models/taggers named as its repository (SmilingWolf/wd-vit-tagger-v3 "
                                           "-> wd-vit-tagger-v3)."),
                    io.String.Input("image_dir", default="training/my_dataset", optional=True,
                                    tooltip="Folder of images (relative: ComfyUI's input folder); unused when images is linked."),
                    io.Image.Input("images", optional=True, tooltip="Images to tag instead of a folder (nothing is written)."),
                    io.Float.Input("general_threshold", default=0.35, min=0.0, max=1.0, step=0.01),
                    io.Float.Input("character_threshold", default=0.35, min=0.0, max=1.01, step=0.01,
                                   tooltip="Above 1: no character tags."),
                    io.Combo.Input("rating_tag", options=["none", "first", "last"], default="none",
                                   tooltip="The most likely rating (general, sensitive, questionable, explicit) as a tag."),
                    io.Boolean.Input("character_tags_first", default=False),
                    io.Boolean.Input("character_tag_expand", default=False,
                                     tooltip="'name_(series)' becomes 'name, series'."),
                    io.Boolean.Input("remove_underscore", default=True,
                                     tooltip="long_hair -> long hair (tags of 3 characters or less, e.g. ^_^, are kept)."),
                    io.String.Input("undesired_tags", default="", tooltip="Comma-separated tags never written."),
                    io.String.Input("always_first_tags", default="",
                                    tooltip="Comma-separated tags put first when found (the last one listed ends up first, as sd-scripts)."),
                    io.String.Input("caption_separator", default=", ", advanced=True),
                    io.Int.Input("batch_size", default=8, min=1, max=256),
                    *_write_inputs(".txt"),
                    io.String.Input("tag_replacement", default="", optional=True, advanced=True,
                                    tooltip="sd-scripts' --tag_replacement: source,target pairs separated by ; (e.g. "
                                            "1girl,1woman;long hair,very long hair), applied after remove_underscore. "
                                            "A comma or semicolon inside a tag is written \\, or \\;."),
                    io.String.Input("output_json", default="", optional=True,
                                    tooltip="sd-scripts' --output_path: also write {image: {tags, image_size}} as JSON, or "
                                            "one line per image with a .jsonl name. Relative paths go into ComfyUI's "
                                            "output folder; empty: none.")],
            outputs=[io.String.Output(display_name="tags", is_output_list=True),
                     io.String.Output(display_name="frequency"),
                     io.Image.Output(display_name="frequency_chart"), _folder_output()],
            is_output_node=True)

    @classmethod
    def validate_inputs(cls, model=None) -> bool | str:
        from ..training.data_prep.tagger import REQUIRED_FILES

        return _model_found(model, "taggers", REQUIRED_FILES, TAGGERS)

    @classmethod
    def execute(cls, model, general_threshold, character_threshold, rating_tag, character_tags_first,
                character_tag_expand, remove_underscore, undesired_tags, always_first_tags, caption_separator, batch_size,
                write_files, caption_extension, if_exists, image_dir=None, images=None, tag_replacement="",
                output_json="") -> io.NodeOutput:
        from ..files.atomic import write_atomic
        from ..training.lora.tools.chart import bar_chart

        if write_files:
            beside(Path("x"), caption_extension)
        parse_tag_replacement(tag_replacement)  # a malformed list fails before the model loads
        json_path = _output_path(output_json, "output_json") if output_json.strip() else None
        tagger = load_tagger(model, _model_dirs("taggers"), *_device_dtype())
        pictures, files = _images(image_dir, images)
        options = TagOptions(general_threshold, character_threshold, rating_tag == "first", rating_tag == "last",
                             character_tags_first, character_tag_expand, remove_underscore, undesired_tags,
                             always_first_tags, caption_separator, batch_size, tag_replacement)
        result = tagger.tag(pictures, options, *_progress_hooks(len(pictures)))
        texts = [caption_separator.join(t) for t in result.tags]
        if json_path is not None:
            keys = [str(f) for f in files] if files else [f"images[{i}]" for i in range(len(texts))]
            merged = texts if if_exists != "append" or not files else [
                with_existing(f, t, caption_extension, caption_separator) for f, t in zip(files, texts)]
            write_atomic(json_path, tags_metadata(keys, merged, [p.size for p in pictures], json_path.suffix == ".jsonl"),
                         "tag metadata")
        written = _write_results(files, texts, write_files, caption_extension, if_exists)
        if json_path is not None:
            written += f"\n{json_path}: {len(texts)} entries"
        table = result.frequency_table()
        frequency = "\n".join(f"{tag}: {n}" for tag, n in table)
        chart = bar_chart(dict(table[:30]) or {"(no tags)": 0.0}, f"tag frequency ({len(pictures)} images)")
        return io.NodeOutput(texts, frequency, chart, _folder(files, image_dir), ui=ui.PreviewText(f"{written}\n\n{frequency}"))


NODES = [EditCaptions, MergeMetadata, DatasetFromMetadata, ResizeImages, LookAtDataset, CaptionImages, TagImages]
