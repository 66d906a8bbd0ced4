"""Segmentation: ControlNet's ADE20K colours, and a tiny random UperNet saved with
save_pretrained giving the same map through our node library as through transformers' own
pipeline (its image processor, the model, post_process_semantic_segmentation)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tiny_preprocessors as tp
from lllite_kit.preprocessors import segmentation as seg
from lllite_kit.preprocessors import weights as w

H, W = 64, 96


def write_upernet_folder(folder, seed: int = 0, classes: int = seg.ADE20K_CLASSES):
    """Image processor sized to the test picture, so no resampling filter is compared."""
    return tp.write_upernet_folder(folder, seed, classes, (H, W))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_upernet_folder(tmp_path_factory.mktemp("seg") / "upernet-convnext-small")


def _picture(seed=0, h=H, w=W) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_palette_is_controlnets_ade20k_palette():
    cna = pytest.importorskip("controlnet_aux.util")
    assert [list(c) for c in seg.ADE20K_PALETTE] == cna.ade_palette()
    assert len(set(seg.ADE20K_PALETTE)) == 149  # ADE20K repeats one colour (classes 6 and 48)


def test_map_equals_transformers_pipeline_with_controlnet_colours(folder):
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    pictures = [_picture(0), _picture(1)]
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    model = UperNetForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        outputs = model(**processor(images=pictures, return_tensors="pt"))
    labels = torch.stack(processor.post_process_semantic_segmentation(outputs, target_sizes=[(H, W)] * 2))
    palette = np.array(seg.ADE20K_PALETTE, np.uint8)
    expected = torch.from_numpy(palette[labels.numpy()]).permute(0, 3, 1, 2).float() / 255.0

    images = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0
    ours = seg.segment(seg.load_segmenter(str(folder)), images, detect_resolution=H)
    assert labels.unique().numel() >= 4  # several classes: a constant map would prove nothing
    same = (ours == expected).all(1).float().mean()
    assert same >= 0.999, same  # float summation order may flip a near-tie between two classes


def test_labels_are_upsampled_like_interpolate_then_argmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 9, 11)
    for size in ((50, 61), (9, 11), (300, 20)):
        expected = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
        assert torch.equal(seg.upsampled_labels(logits, *size), expected)


def test_any_picture_size_comes_back_at_its_size(folder):
    images = torch.rand(5, 4, 37, 51)  # RGBA, odd size, more than one chunk
    out = seg.segment(seg.load_segmenter(str(folder)), images, detect_resolution=64)
    assert out.shape == (5, 3, 37, 51)
    colours = {tuple(round(v * 255) for v in px) for px in out.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    assert colours <= set(seg.ADE20K_PALETTE)
    assert torch.allclose(seg.segment(seg.load_segmenter(str(folder)), images[2:3], 64), out[2:3])


def test_wrong_models_name_the_architecture(tmp_path):
    with pytest.raises(w.WrongWeightLayout, match="predicts 19 classes.*ADE20K"):
        seg.build_segmenter(str(write_upernet_folder(tmp_path / "cityscapes", classes=19)))
    with pytest.raises(w.WrongWeightLayout, match="'dpt' model; expected UperNet ADE20K"):
        seg.build_segmenter(str(tp.write_midas_folder(tmp_path / "dpt-hybrid-midas")))
    tp.write_hed(tmp_path / "ControlNetHED.pth")
    with pytest.raises(w.WrongWeightLayout, match="is a file; UperNet"):
        seg.build_segmenter(str(tmp_path / "ControlNetHED.pth"))
    with pytest.raises(w.WeightFileMissing, match="openmmlab/upernet-convnext-small.*whole folder"):
        w.locate("upernet-convnext-small", [str(tmp_path)])


def test_node_in_a_graph_paints_the_picture_at_its_size(graph, comfy_dirs):
    from PIL import Image

    write_upernet_folder(comfy_dirs / "models" / "preprocessors" / "upernet-convnext-small")
    Image.fromarray(_picture(2, 40, 56)).save(comfy_dirs / "input" / "seg_picture.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "seg_picture.png"}},
              "2": {"class_type": "LLLiteKit_SegmentationADE20K",
                    "inputs": {"image": ["1", 0], "weights": "upernet-convnext-small", "detect_resolution": 64}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    graph.run(prompt)
    out = graph.node_outputs("2")[0][0]
    assert out.shape == (1, 40, 56, 3)
    colours = {tuple(round(v * 255) for v in px) for px in out.reshape(-1, 3).tolist()}
    assert colours <= set(seg.ADE20K_PALETTE) and len(colours) >= 2
