"""The Canny node through ComfyUI's executor, and the pack loading through ComfyUI's loader."""
import asyncio
import logging

import torch


def test_canny_node_in_a_graph(graph, comfy_dirs):
    from PIL import Image
    import numpy as np

    arr = np.zeros((48, 72, 3), dtype=np.uint8)
    arr[10:38, 20:50] = 255
    Image.fromarray(arr).save(comfy_dirs / "input" / "rect.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rect.png"}},
        "2": {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["1", 0], "low_threshold": 100, "high_threshold": 200, "l2_gradient": False}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "canny"}},
    }
    out = graph.run(prompt)
    saved = out["3"]["images"][0]
    img = np.array(Image.open(comfy_dirs / "output" / saved["subfolder"] / saved["filename"]))
    assert img.shape == (48, 72, 3)
    assert set(np.unique(img)) == {0, 255}
    assert img[24, 19:22].max() == 255 and img[24, 30:40].max() == 0


def test_pack_loads_through_comfyui_loader_without_warnings(caplog):
    import nodes
    from paths import REPO

    caplog.set_level(logging.WARNING)
    # The loader imports a second copy of the pack and registers its classes over the ones the
    # other graph tests run (and whose module state, such as loaded models, they inspect): the
    # registrations are put back afterwards, so no later test in this process sees the copy.
    mappings = {m: dict(getattr(nodes, m)) for m in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")}
    try:
        ok = asyncio.run(nodes.load_custom_node(str(REPO)))
        assert ok
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert "LLLiteKit_Canny" in nodes.NODE_CLASS_MAPPINGS
    finally:
        for name, saved in mappings.items():
            getattr(nodes, name).clear()
            getattr(nodes, name).update(saved)
