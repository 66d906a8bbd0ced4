"""The real server: `main.py --cpu` with the pack (and the tiny-model test pack) in custom_nodes,
driven over HTTP like the frontend does."""
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import requests
from PIL import Image

from paths import COMFYUI_DIR, REPO

pytestmark = pytest.mark.server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-lllite-kit").symlink_to(REPO)
    (base / "custom_nodes" / "lllite_kit_tiny_models").symlink_to(REPO / "tests" / "tiny_nodes")
    (base / "input").mkdir()
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[16:48, 16:48] = 255
    Image.fromarray(arr).save(base / "input" / "square.png")
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
         "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
        cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError("server exited early:\n" + (base / "server.log").read_text()[-3000:])
            try:
                if requests.get(url + "/system_stats", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server not up in 180 s:\n" + (base / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_server_reports_comfyui_030_and_lists_the_pack(server):
    url, base = server
    stats = requests.get(url + "/system_stats").json()
    assert stats["system"]["comfyui_version"] == "0.30.0"
    info = requests.get(url + "/object_info").json()
    assert "LLLiteKit_Canny" in info and "LLLiteKitTest_TinyCheckpoint" in info
    assert info["LLLiteKit_Canny"]["category"].startswith("LLLite Kit")
    templates = requests.get(url + "/workflow_templates").json()
    assert "Canny edges from a picture" in templates.get("comfyui-lllite-kit", [])
    thumb = requests.get(url + "/api/workflow_templates/comfyui-lllite-kit/Canny edges from a picture.jpg")
    assert thumb.ok and thumb.content[:3] == b"\xff\xd8\xff"  # the template browser's picture, a JPEG
    log = (base / "server.log").read_text()
    pack_lines = [l for l in log.splitlines() if "lllite" in l.lower() and ("warn" in l.lower() or "error" in l.lower() or "failed" in l.lower())]
    assert pack_lines == []


def test_a_fresh_comfyui_gets_the_pack_model_folders(server):
    url, base = server
    for name in ("lllite", "preprocessors"):
        assert (base / "models" / name).is_dir(), f"models/{name} not created at start-up"
    listed = {f["name"]: f["folders"] for f in requests.get(url + "/experiment/models").json()}
    assert str(base / "models" / "lllite") in listed["lllite"]
    assert str(base / "models" / "preprocessors") in listed["preprocessors"]
    hed = requests.get(url + "/object_info/LLLiteKit_HED").json()["LLLiteKit_HED"]
    assert hed["input"]["required"]["weights"][1]["options"][0] == \
        "ControlNetHED.pth (missing: put it in models/preprocessors)"


def test_queue_a_workflow_over_http(server):
    url, base = server
    prompt = {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sdxl", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a square"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
              "latent_image": ["3", 0], "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "e2e_sample"}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "8": {"class_type": "LLLiteKit_Canny", "inputs": {"image": ["7", 0], "low_threshold": 100, "high_threshold": 200, "l2_gradient": False}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "e2e_canny"}},
    }
    r = requests.post(url + "/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert r.ok, r.text
    prompt_id = r.json()["prompt_id"]
    deadline = time.time() + 180
    while time.time() < deadline:
        hist = requests.get(f"{url}/history/{prompt_id}").json()
        if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    entry = hist[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    sample = entry["outputs"]["6"]["images"][0]
    edges = entry["outputs"]["9"]["images"][0]
    assert np.array(Image.open(base / "output" / sample["filename"])).shape == (64, 64, 3)
    e = np.array(Image.open(base / "output" / edges["filename"]))
    assert e[32, 15:18].max() == 255 and e[32, 24:40].max() == 0


def test_bad_graph_is_rejected_with_comfyui_error(server):
    url, _ = server
    bad = {"1": {"class_type": "LLLiteKit_Canny", "inputs": {"low_threshold": 100, "high_threshold": 200, "l2_gradient": False}}}
    r = requests.post(url + "/prompt", json={"prompt": bad})
    assert r.status_code == 400
