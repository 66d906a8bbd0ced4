"""Thumbnails for the template browser: each example workflow run on the tiny test models
(as tests/test_example_workflows.py runs them), the pictures of the nodes its layout names
(`thumbnail = [...]`) composed side by side under the workflow's title, 512 px wide JPEG.
The tiny models draw noise, not cats: the pictures show what each node produces, in shape."""
import importlib.util
import math
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
WIDTH, MAX_HEIGHT, MAX_BYTES = 512, 512, 60_000
BACKGROUND, TEXT, MUTED = (30, 32, 36), (235, 235, 235), (170, 175, 185)
TITLE_BAND, LABEL_BAND, MARGIN = 40, 18, 8
_SHOWN_BY_FILE = ("PreviewImage", "SaveImage")


def _import_pack() -> None:
    """The pack as `lllite_kit` and the tests' helpers on sys.path, as tests/conftest.py sets up."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tiny_nodes")]
    if "lllite_kit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lllite_kit", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lllite_kit"] = module
        spec.loader.exec_module(module)


def _comfy_dirs(root: Path) -> None:
    import folder_paths

    for sub in ("output", "input", "temp"):
        (root / sub).mkdir()
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_temp_directory(str(root / "temp"))
    for name in ("checkpoints", "loras", "controlnet", "lllite", "preprocessors"):
        (root / "models" / name).mkdir(parents=True)
        folder_paths.add_model_folder_path(name, str(root / "models" / name), is_default=True)


def example_picture(path: Path, size: int = 256) -> None:
    """A drawn scene with clear edges (house, sun, tree, ground) instead of a photo."""
    im = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(im)
    for y in range(size):  # sky gradient
        d.line([(0, y), (size, y)], fill=(120 + y // 4, 170 + y // 6, 230))
    s = size / 256
    d.ellipse([190 * s, 20 * s, 236 * s, 66 * s], fill=(250, 210, 80))
    d.rectangle([0, 190 * s, size, size], fill=(90, 150, 70))
    d.rectangle([60 * s, 120 * s, 160 * s, 200 * s], fill=(200, 120, 90))
    d.polygon([(50 * s, 122 * s), (110 * s, 70 * s), (170 * s, 122 * s)], fill=(120, 60, 50))
    d.rectangle([98 * s, 155 * s, 122 * s, 200 * s], fill=(80, 50, 40))
    d.rectangle([72 * s, 135 * s, 92 * s, 155 * s], fill=(220, 235, 250))
    d.rectangle([130 * s, 135 * s, 150 * s, 155 * s], fill=(220, 235, 250))
    d.rectangle([200 * s, 150 * s, 210 * s, 200 * s], fill=(100, 70, 40))
    d.ellipse([180 * s, 105 * s, 230 * s, 160 * s], fill=(50, 120, 50))
    im.save(path)


def _to_pil(image) -> Image.Image:
    """First picture of an IMAGE batch (B, H, W, C in 0..1)."""
    arr = (image[0].detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]).convert("RGB")


def _picture(graph, outputs: dict, prompt: dict, node_id: str) -> Image.Image:
    import folder_paths

    if prompt[node_id]["class_type"] in _SHOWN_BY_FILE:
        first = outputs[node_id]["images"][0]
        folder = Path(folder_paths.get_directory_by_type(first["type"])) / first["subfolder"]
        return Image.open(folder / first["filename"]).convert("RGB")
    return _to_pil(graph.node_outputs(node_id)[0][0])


def _label(ui: dict, node_id: str) -> str:
    node = next(n for n in ui["nodes"] if str(n["id"]) == node_id)
    import nodes

    return (node.get("title") or nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node["type"], node["type"])).removeprefix("Preview: ")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType scaling
        return ImageFont.load_default()


def compose(title: str, panels: list[tuple[str, Image.Image]]) -> Image.Image:
    """Title band, then the pictures in a grid (up to 3 per row at 2 or 3 pictures, more
    rows for more), each with its caption; WIDTH wide, at most MAX_HEIGHT high."""
    per_row = len(panels) if len(panels) <= 3 else math.ceil(len(panels) / math.ceil(len(panels) / 5))
    rows = math.ceil(len(panels) / per_row)
    cell = (WIDTH - MARGIN * (per_row + 1)) // per_row
    cell = min(cell, (MAX_HEIGHT - TITLE_BAND - MARGIN - rows * (LABEL_BAND + MARGIN)) // rows)
    height = TITLE_BAND + rows * (cell + LABEL_BAND + MARGIN) + MARGIN
    card = Image.new("RGB", (WIDTH, height), BACKGROUND)
    d = ImageDraw.Draw(card)
    size = 20
    while size > 12 and d.textlength(title, font=_font(size)) > WIDTH - 2 * MARGIN:
        size -= 1
    d.text((MARGIN + 2, 10), title, fill=TEXT, font=_font(size))
    label_font = _font(12)
    x0 = (WIDTH - per_row * cell - (per_row - 1) * MARGIN) // 2
    for i, (label, picture) in enumerate(panels):
        r, c = divmod(i, per_row)
        x, y = x0 + c * (cell + MARGIN), TITLE_BAND + r * (cell + LABEL_BAND + MARGIN)
        fitted = picture.copy()
        fitted.thumbnail((cell, cell), Image.LANCZOS if max(picture.size) > cell else Image.NEAREST)
        if max(fitted.size) < cell:  # tiny-model outputs are 64 px: enlarge, keeping pixels sharp
            k = cell / max(fitted.size)
            fitted = fitted.resize((max(1, round(fitted.width * k)), max(1, round(fitted.height * k))), Image.NEAREST)
        card.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        text = label if d.textlength(label, font=label_font) <= cell else label[: max(1, cell // 7 - 1)] + "…"
        d.text((x + 2, y + cell + 3), text, fill=MUTED, font=label_font)
    return card


def save_jpeg(card: Image.Image, path: Path) -> None:
    for quality in (85, 75, 65, 55, 45):
        card.save(path, "JPEG", quality=quality, optimize=True)
        if path.stat().st_size < MAX_BYTES:
            return
    raise RuntimeError(f"{path.name} stays over {MAX_BYTES} bytes")


def write_thumbnails(workflows: dict[str, Path]) -> None:
    """{example key: its UI workflow file} -> <file>.jpg beside each."""
    import json

    _import_pack()
    import tiny_models
    from graph_runner import GraphRunner
    from workflow_fixtures import tiny_prompt

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _comfy_dirs(root)
        graph = GraphRunner.instance()
        for key, ui_file in workflows.items():
            layout = tomllib.loads((REPO / "example_workflows" / "api" / f"{key}.toml").read_text(encoding="utf-8"))
            ui = json.loads(ui_file.read_text(encoding="utf-8"))
            example_picture(root / "input" / "example.png")
            prompt = tiny_prompt(key, ui, root, tiny_models)
            outputs = graph.run(prompt)
            panels = [(_label(ui, nid), _picture(graph, outputs, prompt, nid)) for nid in layout["thumbnail"]]
            out = ui_file.with_suffix(".jpg")
            save_jpeg(compose(layout["title"], panels), out)
            print("wrote", out.relative_to(REPO), out.stat().st_size, "bytes")
