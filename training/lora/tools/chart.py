"""The per-block bar chart of a LoRA (inspect): one labelled bar per block, as a ComfyUI IMAGE
(1, H, W, 3) in [0, 1], the layout training/loss_curve.py uses for its images."""
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def bar_chart(values: dict[str, float], title: str, width: int = 640, height: int = 320, label_px: int = 44) -> torch.Tensor:
    """A bar per label, scaled to the largest value (printed top left); labels upright under the
    bars, in label_px pixels."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 8, 8, 22, label_px
    top_value = max(values.values(), default=0.0)
    draw.text((left, 4), f"{title} (max {top_value:.4g})", fill="black", font=font)
    slot = (width - left - right) / max(len(values), 1)
    for i, (label, v) in enumerate(values.items()):
        x0, x1 = left + (i + 0.15) * slot, left + (i + 0.85) * slot
        y0 = height - bottom - (height - top - bottom) * max(v, 0.0) / (top_value or 1.0)
        draw.rectangle([x0, y0, x1, height - bottom], fill=(31, 119, 180))
        tag = Image.new("L", (bottom - 4, 11), 255)
        ImageDraw.Draw(tag).text((0, 0), label, fill=0, font=font)
        img.paste(tag.rotate(90, expand=True), (int(x0), height - bottom + 2))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
