"""The loss-curve image: one or more named series per step, raw values faint and a moving
average on top, min/max and step labels. Returns a ComfyUI IMAGE (1, H, W, 3) in [0, 1]."""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def draw_loss_curve(series: dict[str, list], width: int = 640, height: int = 360,
                    x_range: tuple[int, int] | None = None, zero_line: bool = False) -> torch.Tensor:
    """series: name -> one value per optimizer step, or (step, value) pairs for values measured
    every few steps (non-finite values are skipped). x_range: the step axis (so panels drawn
    one above the other line up); zero_line: keep 0 in view and draw it."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, 12, 12, 28
    pw, ph = width - left - right, height - top - bottom
    points = {name: [p if isinstance(p, tuple) else (i + 1, p) for i, p in enumerate(values)] for name, values in series.items()}
    finite = [v for pts in points.values() for _, v in pts if math.isfinite(v)]
    steps = [s for pts in points.values() for s, _ in pts]
    draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    if not finite:
        draw.text((left + 8, top + 8), "no loss recorded yet", fill=(0, 0, 0), font=font)
        return _to_image(img)
    x0, x1 = x_range if x_range is not None else (min(steps), max(steps))
    lo, hi = min(finite), max(finite)
    if zero_line:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def xy(step, v):
        x = left + ((step - x0) / max(1, x1 - x0)) * pw
        return x, top + (1 - (v - lo) / (hi - lo)) * ph

    if zero_line:
        y = xy(x0, 0.0)[1]
        for x in range(left, left + pw, 6):
            draw.line([(x, y), (x + 2, y)], fill=(120, 120, 120))
    for k, (name, pts) in enumerate(points.items()):
        colour = COLOURS[k % len(COLOURS)]
        faint = tuple(int(c + (255 - c) * 0.65) for c in colour)
        shown = [xy(s, v) for s, v in pts if math.isfinite(v)]
        if len(shown) > 1:
            draw.line(shown, fill=faint, width=1)
        window = max(1, len(pts) // 20)
        values = [v if math.isfinite(v) else lo for _, v in pts]
        avg = [xy(s, v) for (s, _), v in zip(pts, moving_average(values, window))]
        if len(avg) > 1:
            draw.line(avg, fill=colour, width=2)
        elif avg:
            draw.ellipse([avg[0][0] - 2, avg[0][1] - 2, avg[0][0] + 2, avg[0][1] + 2], fill=colour)
        last = pts[-1][1] if pts else float("nan")
        draw.text((left + 8, top + 4 + 12 * k), f"{name}: {last:.4g}", fill=colour, font=font)
    draw.text((4, top), f"{hi:.4g}", fill=(0, 0, 0), font=font)
    draw.text((4, top + ph - 10), f"{lo:.4g}", fill=(0, 0, 0), font=font)
    draw.text((left, top + ph + 6), f"step {x0}", fill=(0, 0, 0), font=font)
    draw.text((left + pw - 60, top + ph + 6), f"step {x1}", fill=(0, 0, 0), font=font)
    return _to_image(img)


def _to_image(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]
