"""Captions and tags per second, batched (one generate / forward per --batch images on the
model's device) against a per-image loop of the same loaded model in the same run: BLIP
(transformers) and a WD14 v3 tagger (timm ViT at 448 px, 10861 tags), through the library
the nodes use (training/data_prep). Weights are random (speed does not depend on their
values); captions are forced to exactly --tokens tokens (min_length = max_length, greedy), so
both modes generate the same amount. Rounds alternate A B B A; medians are compared.

    .venv/bin/python bench/bench_dataset_prep.py               # BLIP-base and ViT tagger sizes, CPU or GPU
    .venv/bin/python bench/bench_dataset_prep.py --smoke       # seconds: tiny models, one thread
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def blip_folder(root: Path, smoke: bool) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = root / "blip"
    folder.mkdir()
    vocab = 64 if smoke else 30524
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
                                                + [f"w{i}" for i in range(vocab - 6)]) + "\n")
    size = 32 if smoke else 384
    if smoke:
        small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
        text, vision = dict(small, encoder_hidden_size=32), dict(small, image_size=size, patch_size=8)
    else:  # Salesforce/blip-image-captioning-base's sizes (BlipConfig defaults: ViT-B/16 at 384, BERT-base)
        text, vision = {}, dict(image_size=size)
    torch.manual_seed(0)
    config = BlipConfig(text_config=dict(vocab_size=vocab, bos_token_id=5, sep_token_id=3, pad_token_id=0, **text),
                        vision_config=vision)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(BlipImageProcessor(size={"height": size, "width": size}), tokenizer).save_pretrained(folder)
    return folder


def tagger_folder(root: Path, smoke: bool) -> Path:
    import csv
    import json

    import safetensors.torch
    import timm
    import torch

    folder = root / "tagger"
    folder.mkdir()
    tags, size = (10, 32) if smoke else (10861, 448)
    args = dict(img_size=size, class_token=False, global_pool="avg", fc_norm=False)
    if smoke:
        args |= dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=tags, **args)
    safetensors.torch.save_file(net.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": tags,
                                                    "model_args": args, "pretrained_cfg": {"input_size": [3, size, size]}}))
    with open(folder / "selected_tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        w.writerows([i, f"tag_{i}", "9" if i < 4 else "0", 1] for i in range(tags))
    return folder


def abba(label: str, batched, looped, n_images: int, rounds: int) -> None:
    times = {"batched": [], "loop": []}
    for r in range(rounds):
        for name in (("batched", "loop") if r % 2 == 0 else ("loop", "batched")):
            t = time.perf_counter()
            (batched if name == "batched" else looped)()
            times[name].append(time.perf_counter() - t)
    b, l_ = statistics.median(times["batched"]), statistics.median(times["loop"])
    print(f"{label}: batched {n_images / b:.2f}/s, per-image loop {n_images / l_:.2f}/s")
    print(f"{benchlib.RATIO_PREFIX} {label} per second, batched / per-image loop x{l_ / b:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=20, help="caption length in tokens (forced)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="tiny models, one thread")
    opts = p.parse_args()
    benchlib.bootstrap()
    if opts.smoke:
        benchlib.smoke_threads()
        opts.images, opts.rounds, opts.tokens = 4, 2, 6
    import numpy as np
    import torch
    from PIL import Image

    from lllite_kit.training.data_prep.captioner import Captioner, CaptionOptions
    from lllite_kit.training.data_prep.tagger import Tagger, TagOptions

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    print(f"device {device}, {opts.images} images, batch {opts.batch}, torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (480, 360, 3), dtype=np.uint8)) for _ in range(opts.images)]
    with tempfile.TemporaryDirectory() as tmp:
        captioner = Captioner(blip_folder(Path(tmp), opts.smoke), device, dtype)
        options = dict(decoding="greedy", max_length=opts.tokens, min_length=opts.tokens)
        abba("BLIP captions", lambda: captioner.caption(images, CaptionOptions(batch_size=opts.batch, **options)),
             lambda: captioner.caption(images, CaptionOptions(batch_size=1, **options)), opts.images, opts.rounds)
        del captioner
        tagger = Tagger(tagger_folder(Path(tmp), opts.smoke), device, dtype)
        abba("WD14 tags", lambda: tagger.tag(images, TagOptions(batch_size=opts.batch)),
             lambda: tagger.tag(images, TagOptions(batch_size=1)), opts.images, opts.rounds)


if __name__ == "__main__":
    main()
