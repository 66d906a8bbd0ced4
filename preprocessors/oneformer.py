"""OneFormer ADE20K semantic segmentation through transformers'
OneFormerForUniversalSegmentation, from a local save_pretrained folder
(shi-labs/oneformer_ade20k_swin_large or _swin_tiny: config.json, weights, image processor
settings and the CLIP tokenizer files). OneFormer is told its task by a text prompt; the
prompt "the task is semantic" is tokenised once, when the model loads. The class scores
are transformers' post_process_semantic_segmentation's (each query's class probabilities
weighted by its mask probability), so segmentation.segment upsamples and paints them in
ControlNet's ADE20K colours as it does UperNet's logits."""
import torch
import torch.nn as nn

from .depth import load_transformers_folder
from .segmentation import ADE20K_CLASSES, TransformersSegmenter, normalisation
from .weights import ONEFORMER_ADE20K_SWIN_LARGE, WrongWeightLayout

ARCH = ONEFORMER_ADE20K_SWIN_LARGE.architecture
TASK_PROMPT = "the task is semantic"  # OneFormerProcessor's wording for the semantic task


class OneFormerSegmenter(TransformersSegmenter):
    """RGB 0..1 in, ADE20K class scores (B, 150, h, w) at the mask resolution (1/4) out."""

    def __init__(self, net: nn.Module, task_tokens: torch.Tensor, mean, std):
        super().__init__(net, mean, std)
        self.register_buffer("task_tokens", task_tokens, persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        out = self.net(pixel_values=(rgb - mean) / std, task_inputs=self.task_tokens.expand(rgb.shape[0], -1))
        classes = out.class_queries_logits.softmax(-1)[..., :-1]  # the last class is "no object"
        return torch.einsum("bqc,bqhw->bchw", classes, out.masks_queries_logits.sigmoid())


def task_tokens(path: str, length: int) -> torch.Tensor:
    """(1, length) token ids of the semantic task prompt, padding zeroed as OneFormerProcessor does."""
    from transformers import AutoTokenizer

    missing = (f"{path} has no readable tokenizer (tokenizer.json, or vocab.json + merges.txt); {ARCH} needs it "
               f"for its task prompt: copy the whole model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise WrongWeightLayout(missing) from e
    # without its files transformers builds an empty tokenizer that spells every word as unknown
    if tokenizer.unk_token_id in tokenizer(TASK_PROMPT, add_special_tokens=False)["input_ids"]:
        raise WrongWeightLayout(missing)
    tokens = tokenizer([TASK_PROMPT], padding="max_length", max_length=length, truncation=True)
    return torch.tensor(tokens["input_ids"]) * torch.tensor(tokens["attention_mask"])


def build_oneformer(path: str) -> OneFormerSegmenter:
    from transformers import OneFormerForUniversalSegmentation

    net, processor = load_transformers_folder(path, "oneformer", OneFormerForUniversalSegmentation, ARCH)
    if net.config.num_labels != ADE20K_CLASSES:
        raise WrongWeightLayout(f"{path} predicts {net.config.num_labels} classes; ControlNet's seg colours are "
                                f"those of ADE20K's {ADE20K_CLASSES} ({ARCH})")
    return OneFormerSegmenter(net, task_tokens(path, net.config.task_seq_len), *normalisation(processor))
