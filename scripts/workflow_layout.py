"""Place a UI workflow's nodes in groups, left to right, each group headed by a Note, with
every node given the size ComfyUI's frontend (1.47) draws it at, so nothing overlaps.

A layout is declared per workflow in example_workflows/api/<name>.toml:

    [[groups]]
    title = "1. Load"                 # group title on the canvas
    note = "What to provide ..."      # the group's Note
    columns = [["1"], ["2", "3"]]     # API node ids, column by column, top to bottom
    row = 1                           # optional (default 0): groups fill rows left to right,
                                      # like lines of text, when one row would be too wide

Sizes follow the frontend's geometry (title bar 30 px above `pos`, 20 px per slot row,
20 px widgets with 4 px spacing, multiline text at least 400 x 200, image previews at least
220 high) with margins on top, since what a node shows can grow while it runs.
"""
import math

import nodes
from workflow_format import extra_widget_values, input_specs, is_widget, output_types

TITLE_H = 30          # node title bar, drawn above pos
SLOT_H = 20
WIDGET_H = 24         # 20 px widget + 4 px spacing
MULTILINE_H = 210     # the textarea's 200 px minimum + spacing
MULTILINE_W = 400     # the textarea's minimum width
IMAGE_H = 280         # image preview (220 px minimum) with room for its caption
MIN_W = 320
GAP_X, GAP_Y = 60, 40  # between columns (room for links) and between stacked nodes
GROUP_PAD, GROUP_HEADER, GROUP_GAP = 20, 50, 80
NOTE_CHAR_W, NOTE_LINE_H = 7.5, 19  # the Note's textarea text, rounded up
# Nodes that draw an image under their widgets (uploads, previews, sampler latent previews).
_IMAGE_NODES = ("LoadImage", "PreviewImage", "SaveImage", "KSampler", "KSamplerAdvanced")
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"
GROUP_COLOR = "#3f789e"


def _shows_image(class_type: str) -> bool:
    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    return class_type in _IMAGE_NODES or bool(getattr(cls, "OUTPUT_NODE", False))


def rendered_size(class_type: str, title: str = "") -> list[int]:
    """[width, height] of the node body (pos is its top-left; the title bar is above it)."""
    slots, widgets, multiline, names = 0, 0, 0, []
    for name, typ, opts, _required in input_specs(class_type):
        names.append(name)
        if not is_widget(typ):
            slots += 1
        elif opts.get("multiline"):
            multiline += 1
        else:
            widgets += 1 + len(extra_widget_values(name, typ, opts))  # seed control, upload button
    outs = output_types(class_type)
    height = max(slots, len(outs)) * SLOT_H + widgets * WIDGET_H + multiline * MULTILINE_H + 20
    if _shows_image(class_type):
        height += IMAGE_H
    longest_in = max((len(n) for n in names), default=0)
    longest_out = max((len(n) for n, _ in outs), default=0)
    width = max(MIN_W, MULTILINE_W if multiline else 0, 9 * len(title or class_type) + 60,
                7 * longest_in + 150, 7 * (longest_in + longest_out) + 80)
    return [int(math.ceil(width / 10) * 10), int(math.ceil(height / 10) * 10)]


def note_height(text: str, width: int) -> int:
    per_line = max(1, int((width - 30) / NOTE_CHAR_W))
    lines = sum(max(1, math.ceil(len(line) / per_line)) for line in text.split("\n"))
    return max(MULTILINE_H, int(math.ceil((lines * NOTE_LINE_H + 40) / 10) * 10))


def _place_group(group: dict, by_id: dict, x: int, y: int) -> tuple[list, list]:
    """Positions the group's nodes from (x, y); returns (notes to add, group bounding)."""
    cols, col_x = [], x + GROUP_PAD
    for column in group["columns"]:
        width = max(by_id[k]["size"][0] for k in column)
        cols.append((col_x, column))
        col_x += width + GAP_X
    inner_w = max(col_x - GAP_X - (x + GROUP_PAD), MULTILINE_W)
    note_h = note_height(group["note"], inner_w)
    note = {"pos": [x + GROUP_PAD, y + GROUP_HEADER + TITLE_H], "size": [inner_w, note_h], "text": group["note"]}
    top = y + GROUP_HEADER + TITLE_H + note_h + GAP_Y
    bottom = top
    for cx, column in cols:
        cy = top
        for key in column:
            by_id[key]["pos"] = [cx, cy + TITLE_H]
            cy += TITLE_H + by_id[key]["size"][1] + GAP_Y
        bottom = max(bottom, cy - GAP_Y)
    return note, [x, y, inner_w + 2 * GROUP_PAD, bottom + GROUP_PAD - y]


def apply_layout(ui: dict, keys: list[str], layout: dict) -> dict:
    """Sizes and places the nodes of `ui` (made from an API graph whose node ids are `keys`,
    in order) as `layout` declares, adding one Note per group and the groups themselves."""
    by_key = dict(zip(keys, ui["nodes"]))
    placed = [k for g in layout["groups"] for col in g["columns"] for k in col]
    if sorted(placed) != sorted(keys):
        missing, extra = set(keys) - set(placed), [k for k in placed if k not in keys or placed.count(k) > 1]
        raise ValueError(f"layout must place every node once: not placed {sorted(missing)}, unknown or twice {extra}")
    for node in ui["nodes"]:
        node["size"] = rendered_size(node["type"], node.get("title", ""))
    groups, notes, x, y, bottom, row = [], [], 0, 0, 0, 0
    for group in layout["groups"]:
        if group.get("row", 0) != row:
            row, x, y = group.get("row", 0), 0, bottom + GROUP_GAP
        note, bounding = _place_group(group, by_key, x, y)
        notes.append(note)
        groups.append({"id": len(groups) + 1, "title": group["title"], "bounding": bounding, "color": GROUP_COLOR,
                       "font_size": 24, "flags": {}})
        x, bottom = bounding[0] + bounding[2] + GROUP_GAP, max(bottom, bounding[1] + bounding[3])
    next_id = len(ui["nodes"]) + 1
    for i, note in enumerate(notes):
        ui["nodes"].append({
            "id": next_id + i, "type": "Note", "pos": note["pos"], "size": note["size"], "flags": {},
            "order": next_id + i - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""},
            "widgets_values": [note["text"]], "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR,
        })
    ui["last_node_id"] = len(ui["nodes"])
    ui["groups"] = groups
    return ui
