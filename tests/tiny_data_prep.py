"""Tiny random captioner and tagger folders in the published layouts, for the data-prep tests
and the dataset example workflow (no test functions here): BLIP and GIT saved with
save_pretrained plus a tiny BERT vocabulary, a WD14 v3 tagger as a timm ViT with
config.json + selected_tags.csv whose head gives fixed probabilities."""
import csv
import json
from pathlib import Path

import torch

WORDS = "a picture of the cat dog red blue sits on with and in field sky tree house car girl boy hat small big green".split()


def _tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]"), len(WORDS) + 6


def tiny_blip(folder: Path) -> Path:
    """BLIP with BLIP's special-token layout: [DEC] starts, [SEP] ends, [PAD] pads."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer, vocab = _tokenizer(folder)
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    config = BlipConfig(text_config=dict(vocab_size=vocab, bos_token_id=5, sep_token_id=3, pad_token_id=0,
                                         max_position_embeddings=128, encoder_hidden_size=32, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small))
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


def tiny_git(folder: Path) -> Path:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer, vocab = _tokenizer(folder)
    torch.manual_seed(1)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = GitConfig(vision_config=dict(image_size=32, patch_size=8, **small), vocab_size=vocab, max_position_embeddings=128,
                       bos_token_id=2, eos_token_id=3, pad_token_id=0, **small)
    GitForCausalLM(config).save_pretrained(folder)
    GitProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 tokenizer).save_pretrained(folder)
    return folder


TAGS = [("general", "9"), ("sensitive", "9"), ("questionable", "9"), ("explicit", "9"),
        ("long_hair", "0"), ("1girl", "0"), ("^_^", "0"), ("white_shirt", "0"),
        ("hatsune_miku_(vocaloid)", "4"), ("rem_(re:zero)", "4")]
# logits -> these probabilities whatever the image (head weights zero): ratings, general, characters
PROBS = [0.1, 0.6, 0.2, 0.05, 0.9, 0.5, 0.36, 0.3, 0.8, 0.34]
MODEL_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "class_token": False,
              "global_pool": "avg", "fc_norm": False}


def _net(fixed: bool):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(TAGS), **MODEL_ARGS).eval()
    if fixed:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.logit(torch.tensor(PROBS)))
    return net


def tiny_tagger(folder: Path, fixed: bool = True) -> Path:
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(_net(fixed).state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_224", "num_classes": len(TAGS), "num_features": 32, "global_pool": "avg",
        "model_args": MODEL_ARGS, "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic",
                                                     "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}}))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        w.writerows([i, name, cat, 100] for i, (name, cat) in enumerate(TAGS))
    return folder
