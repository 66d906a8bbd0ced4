"""Every shipped workflow is current, laid out readably, listed with a thumbnail, and runs end
to end on the tiny models, so none can rot.

The UI-format file the template browser shows is converted to API format exactly as the
frontend would queue it (Note nodes dropped); `workflow_fixtures.tiny_prompt` swaps in the
tiny test checkpoint, shrinks sizes and step counts and creates the files a workflow names.
"""
import json
import sys
import tomllib

import pytest
from PIL import Image

from paths import REPO

sys.path.insert(0, str(REPO / "scripts"))

EXAMPLES = REPO / "example_workflows"
KEYS = [p.stem for p in sorted((EXAMPLES / "api").glob("*.json"))]
OUTPUT_NODES = ("SaveImage", "PreviewImage")
TITLE_H = 30          # the frontend draws a node's title bar above its pos
GROUP_TITLE_H = 34    # a group's title bar (24 px font + padding)


def _layout(key: str) -> dict:
    return tomllib.loads((EXAMPLES / "api" / f"{key}.toml").read_text(encoding="utf-8"))


def _ui(key: str) -> dict:
    return json.loads((EXAMPLES / f"{_layout(key)['title']}.json").read_text(encoding="utf-8"))


def _rect(node) -> tuple:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_H, x + w, y + h


def _inside(r, box) -> bool:
    return box[0] <= r[0] and box[1] <= r[1] and r[2] <= box[2] and r[3] <= box[3]


def layout_problems(ui: dict) -> list[str]:
    """Overlapping nodes, nodes outside every group, groups without a Note."""
    problems = []
    rects = [(n, _rect(n)) for n in ui["nodes"]]
    for i, (a, ra) in enumerate(rects):
        for b, rb in rects[i + 1:]:
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    boxes = []
    for g in ui["groups"]:
        x, y, w, h = g["bounding"]
        boxes.append((g["title"], (x, y + GROUP_TITLE_H, x + w, y + h)))
    for n, r in rects:
        if not any(_inside(r, box) for _, box in boxes):
            problems.append(f"node {n['id']} ({n['type']}) is outside every group")
    for title, box in boxes:
        if not any(n["type"] == "Note" and _inside(r, box) for n, r in rects):
            problems.append(f"group {title!r} has no Note")
    return problems


def test_every_source_has_its_ui_workflow_and_it_is_current(graph):
    from build_workflows import build, ui_path

    assert KEYS, "no example workflow sources in example_workflows/api/"
    shipped = {ui_path(key) for key in KEYS}
    for key in KEYS:
        assert ui_path(key).exists(), f"{ui_path(key).name} missing: run scripts/build_workflows.py"
        assert json.loads(ui_path(key).read_text()) == build(key), f"{ui_path(key).name} is stale: run scripts/build_workflows.py"
    assert set(EXAMPLES.glob("*.json")) == shipped, "a workflow without a source: run scripts/build_workflows.py"


@pytest.mark.parametrize("key", KEYS)
def test_layout_no_overlap_every_node_in_a_group_with_a_note(key, graph):
    from workflow_layout import rendered_size

    ui = _ui(key)
    assert layout_problems(ui) == []
    assert ui["groups"], "a workflow is read group by group"
    for n in ui["nodes"]:
        if n["type"] != "Note":  # drawn no smaller than the frontend draws it
            need = rendered_size(n["type"], n.get("title", ""))
            assert n["size"][0] >= need[0] and n["size"][1] >= need[1], (n["id"], n["type"])
        else:
            assert n["widgets_values"][0].strip() and n["size"][0] >= 400 and n["size"][1] >= 200


def test_layout_check_finds_overlaps_strays_and_groups_without_notes():
    ui = _ui("canny_edges")
    first, second = ui["nodes"][0], ui["nodes"][1]
    second["pos"] = [first["pos"][0] + 10, first["pos"][1] + 10]
    assert any("overlap" in p for p in layout_problems(ui))
    second["pos"] = [-5000, -5000]
    assert any("outside every group" in p for p in layout_problems(ui))
    ui = _ui("canny_edges")
    ui["nodes"] = [n for n in ui["nodes"] if n["type"] != "Note"]
    assert sum("has no Note" in p for p in layout_problems(ui)) == len(ui["groups"])


def test_notes_are_dropped_when_queued_as_the_frontend_does(graph):
    from workflow_format import ui_to_api

    ui = _ui("lora_train")
    prompt = ui_to_api(ui)
    assert sum(n["type"] == "Note" for n in ui["nodes"]) == len(ui["groups"])
    assert len(prompt) == len(json.loads((EXAMPLES / "api" / "lora_train.json").read_text()))
    assert "Note" not in {n["class_type"] for n in prompt.values()}


@pytest.mark.parametrize("key", KEYS)
def test_template_browser_entry_title_description_thumbnail(key):
    """ComfyUI's frontend shows a pack's template by file name, with <name>.jpg as its picture."""
    layout = _layout(key)
    assert len(layout["title"]) >= 10 and len(layout["description"]) >= 40
    thumb = EXAMPLES / f"{layout['title']}.jpg"
    assert thumb.exists(), f"{thumb.name} missing: run scripts/build_workflows.py --thumbnails"
    assert thumb.stat().st_size < 60_000
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width == 512 and 200 <= im.height <= 512
        assert len(set(im.convert("L").resize((32, 32)).getdata())) > 8, "a thumbnail should show something"
    assert layout["title"] in (REPO / "README.md").read_text(encoding="utf-8"), "README lists every example"


@pytest.mark.parametrize("key", KEYS)
def test_example_workflow_runs_on_tiny_models(key, graph, comfy_dirs, tiny):
    from workflow_fixtures import tiny_prompt

    prompt = tiny_prompt(key, _ui(key), comfy_dirs, tiny)
    outputs = graph.run(prompt)
    shown = [k for k, n in prompt.items() if n["class_type"] in OUTPUT_NODES]
    assert shown, "an example workflow should show its result"
    for k in shown:
        assert outputs.get(k, {}).get("images"), f"node {k} produced no image"


def test_absent_lllite_file_is_said_in_the_list_and_fails_before_running(graph, comfy_dirs, tiny, tmp_path, monkeypatch):
    import folder_paths
    from graph_runner import GraphError
    from lllite_kit.nodes import lllite_nodes
    from workflow_fixtures import tiny_prompt

    prompt = tiny_prompt("lllite_canny_apply", _ui("lllite_canny_apply"), comfy_dirs, tiny)
    prompt["2"]["inputs"]["lllite_name"] = "controllllite_not_here.safetensors"
    with pytest.raises(GraphError) as e:  # the output that needs the file (ComfyUI still runs the others)
        graph.run(prompt, outputs=["11"])
    msg = str(e.value)
    assert msg.startswith("invalid graph"), "an absent file must fail validation, before any node runs"
    assert "controllllite_not_here.safetensors" in msg and "models/lllite" in msg
    assert lllite_nodes.KOHYA_RELEASES in msg and str(comfy_dirs / "models" / "lllite") in msg

    empty = {k: ([str(tmp_path / k)], v[1]) if k in lllite_nodes.FOLDERS else v
             for k, v in folder_paths.folder_names_and_paths.items()}
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", empty)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    assert lllite_nodes.lllite_files() == [lllite_nodes.NO_FILE]
