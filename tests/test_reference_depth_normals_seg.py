"""MiDaS, BAE normals and OneFormer segmentation against the reference implementations
(controlnet_aux 0.0.10, and transformers for OneFormer) on shared random weights in the
published layouts. The tolerances and the picture are those of test_preprocessors_reference:
where the maths is the same the uint8 maps agree within one level (the reference truncates)."""
import numpy as np
import pytest
import torch

cna = pytest.importorskip("controlnet_aux")  # test-only dependency: pip install controlnet-aux

from test_preprocessors_reference import H, W, _assert_within_one_level, _ours, _reference_map, picture  # noqa: E402,F401

from lllite_kit.preprocessors import midas, midas_dpt, normal_bae  # noqa: E402


def _random_like(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Weights scaled by fan-in, norm gains near 1, small biases: activations stay in range
    through the ViT blocks and the ResNet, so the depth map has structure. Values are cut
    from one seeded pool of prime length (drawing 300M fresh ones would take most of the
    test), so no two filters repeat each other."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1_000_003, generator=g)
    out = {}
    for k, shape in shapes.items():
        start = int(torch.randint(0, pool.numel(), (1,), generator=g))
        values = pool.roll(-start).repeat(shape.numel() // pool.numel() + 1)[: shape.numel()].view(shape)
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros(shape, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = 1 + 0.1 * values.abs()
        elif len(shape) >= 2 and not k.endswith(("pos_embed", "cls_token")):
            out[k] = values / shape[1:].numel() ** 0.5
        elif k.endswith("weight") and len(shape) == 1:
            out[k] = 1 + 0.1 * values
        else:
            out[k] = 0.1 * values
    return out


def _published_midas_layout(hybrid: bool) -> dict[str, torch.Size]:
    """Keys and shapes of dpt_hybrid-midas-501f0c75.pt / dpt_large-midas-2f21e586.pt: ours,
    plus the ViT's final norm and classifier head the files carry."""
    with torch.device("meta"):
        dim, depth = (768, 12) if hybrid else (1024, 24)
        shapes = {k: v.shape for k, v in midas_dpt.MidasDPT(hybrid, dim, depth).state_dict().items()}
    shapes.update({"pretrained.model.norm.weight": torch.Size([dim]), "pretrained.model.norm.bias": torch.Size([dim]),
                   "pretrained.model.head.weight": torch.Size([1000, dim]),
                   "pretrained.model.head.bias": torch.Size([1000])})
    return shapes


def _reference_dpt(hybrid: bool, sd: dict):
    """controlnet_aux's DPTDepthModel built without initialising (meta) and given `sd`
    strictly: the published layout and ours are the same keys and shapes."""
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    with torch.device("meta"):
        ref = DPTDepthModel(path=None, backbone="vitb_rn50_384" if hybrid else "vitl16_384", non_negative=True)
    ref.load_state_dict(sd, strict=True, assign=True)
    return ref.eval()


def _intel_dpt_hybrid():
    """DPTForDepthEstimation as Intel/dpt-hybrid-midas's config.json builds it, on the meta device."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    bit = BitConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 9], layer_type="bottleneck",
                    out_features=["stage1", "stage2", "stage3"], global_padding="SAME", embedding_dynamic_padding=True)
    config = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11],
                       neck_hidden_sizes=[256, 512, 768, 768], fusion_hidden_size=256, reassemble_factors=[1, 1, 1, 0.5],
                       backbone_featmap_shape=[1, 1024, 24, 24], readout_type="project", layer_norm_eps=1e-12)
    with torch.device("meta"):
        return DPTForDepthEstimation(config)


_TO_TRANSFORMERS = [  # (pattern in dpt_hybrid-midas-501f0c75.pt, transformers' name), as transformers' conversion script
    (r"pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.patch_embed\.proj\.", "dpt.embeddings.projection."),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", "dpt.embeddings.backbone.bit.embedder.convolution."),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", "dpt.embeddings.backbone.bit.embedder.norm."),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.",
     r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.", r"dpt.encoder.layer.\1.layernorm_before."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.", r"dpt.encoder.layer.\1.layernorm_after."),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.", r"dpt.encoder.layer.\1.attention.output.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.", r"dpt.encoder.layer.\1.intermediate.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.", r"dpt.encoder.layer.\1.output.dense."),
    (r"pretrained\.model\.norm\.", "dpt.layernorm."),
    (r"pretrained\.act_postprocess(\d)\.0\.project\.0\.", lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0."),
    (r"pretrained\.act_postprocess(\d)\.3\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection."),
    (r"pretrained\.act_postprocess(\d)\.4\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize."),
    (r"scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"scratch\.refinenet(\d)\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (r"scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
    (r"scratch\.output_conv\.", "head.head."),
]


def _to_transformers(sd: dict) -> dict:
    """dpt_hybrid-midas-501f0c75.pt's keys in transformers' DPT layout (qkv split in three)."""
    import re

    out = {}
    for key, value in sd.items():
        qkv = re.fullmatch(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if qkv:
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                out[f"dpt.encoder.layer.{qkv[1]}.attention.attention.{name}.{qkv[2]}"] = part
            continue
        if key.startswith("pretrained.model.head."):
            continue
        for pattern, repl in _TO_TRANSFORMERS:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(key)
    return out


def test_midas_dpt_hybrid_pt_equals_controlnet_aux(tmp_path, picture):  # noqa: F811
    """The original file through our DPT, and the same weights in transformers' layout through
    the transformers-folder path: both equal the annotator's map."""
    from controlnet_aux.midas import MidasDetector

    # stored in fp16 (half the bytes to write; the loader works in fp32 whatever the file holds)
    sd = {k: v.half().float() for k, v in _random_like(_published_midas_layout(hybrid=True), 0).items()}
    ref = _reference_dpt(True, sd)
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save({k: v.half() for k, v in sd.items()}, path)
    expected = MidasDetector(ref)(picture, detect_resolution=H, image_resolution=H, output_type="np")
    ours = midas.midas_depth(midas.load_midas(str(path)), _ours(picture), detect_resolution=H)
    _assert_within_one_level(ours[0, 0], _reference_map(expected))

    net = _intel_dpt_hybrid()
    net.load_state_dict(_to_transformers(sd), strict=True, assign=True)
    with torch.no_grad():
        folder_form = midas.TransformersMidas(net.eval(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(_ours(picture))
    _assert_within_one_level(midas.normalise_per_image(folder_form)[0, 0], _reference_map(expected))


def test_midas_dpt_large_layout_and_network_equal_controlnet_aux():
    """DPT-Large (1.3 GB in fp32) is compared in memory, network against network, at the
    smallest size it takes in both directions (32 x 64)."""
    sd = _random_like(_published_midas_layout(hybrid=False), 1)
    ref = _reference_dpt(False, sd)
    with torch.device("meta"):
        ours = midas_dpt.MidasDPT(False, 1024, 24)
    ours.load_state_dict({k: v for k, v in sd.items() if not k.startswith(midas_dpt.UNUSED_PREFIXES)}, assign=True)
    x = torch.rand(1, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        expected, got = ref(x), ours.eval()(x)[:, 0]
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_normal_bae_equals_controlnet_aux(tmp_path, picture):  # noqa: F811
    """scannet.pt's layout ({"model": DataParallel state dict}); all three channels compared."""
    import types

    from controlnet_aux.normalbae import NormalBaeDetector
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with torch.device("meta"):
        ref = NNET(args)
    sd = _random_like({k: v.shape for k, v in ref.state_dict().items()}, 2)
    for k in sd:  # without the decoder's convolution biases the normals follow the picture, not a constant
        if k.startswith("decoder.") and k.endswith(".bias") and sd[k.replace(".bias", ".weight")].dim() > 1:
            sd[k] = torch.zeros_like(sd[k])
    sd = {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}
    ref.load_state_dict(sd, strict=True, assign=True)
    path = tmp_path / "scannet.pt"
    torch.save({"model": {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    expected = NormalBaeDetector(ref.eval())(picture, detect_resolution=H, image_resolution=H, output_type="np")
    ours = normal_bae.normal_bae(normal_bae.load_normal_bae(str(path)), _ours(picture), detect_resolution=H)
    assert ours.shape == (1, 3, H, W)
    for c in range(3):
        _assert_within_one_level(ours[0, c], torch.from_numpy(np.ascontiguousarray(expected[..., c])).float() / 255)


@pytest.mark.parametrize("node,spec", [("LLLiteKit_NormalBae", "NORMAL_BAE"), ("LLLiteKit_MiDaS", "MIDAS_DPT_HYBRID_ORIGINAL")])
def test_absent_file_fails_validation_naming_file_folder_and_url(graph, comfy_dirs, node, spec):
    from PIL import Image

    from graph_runner import GraphError
    from lllite_kit.preprocessors import weights as w

    from nodes import NODE_CLASS_MAPPINGS

    spec = getattr(w, spec)
    path = comfy_dirs / "models" / "preprocessors" / spec.name
    earlier = path.read_bytes() if path.exists() else None  # an example workflow's fixture may have put one there
    try:
        path.unlink(missing_ok=True)
        choices = NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["weights"][1]["options"]
        assert choices[0] == w.missing_label(spec.name)
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(comfy_dirs / "input" / "grey.png")
        with pytest.raises(GraphError) as e:
            graph.run({"1": {"class_type": "LoadImage", "inputs": {"image": "grey.png"}},
                       "2": {"class_type": node, "inputs": {"image": ["1", 0], "weights": choices[0]}},
                       "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}})
    finally:
        if earlier is not None:
            path.write_bytes(earlier)
    msg = str(e.value)
    assert msg.startswith("invalid graph")
    assert spec.name in msg and str(comfy_dirs / "models" / "preprocessors") in msg and spec.url in msg


def _write_oneformer_folder(folder, seed: int = 0):
    """A tiny random OneFormer (Swin) saved as shi-labs/oneformer_ade20k_* are: model, image
    processor settings, and a CLIP tokenizer (ComfyUI's own SD1 tokenizer files)."""
    from paths import COMFYUI_DIR
    from transformers import CLIPTokenizer, OneFormerConfig, OneFormerForUniversalSegmentation, OneFormerImageProcessor
    from transformers import SwinConfig

    torch.manual_seed(seed)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=swin, num_queries=16, hidden_dim=32, conv_dim=32, mask_dim=32,
                             encoder_layers=1, decoder_layers=2, dim_feedforward=64, num_attention_heads=2,
                             encoder_feedforward_dim=64, text_encoder_width=32, is_training=False,
                             id2label={i: str(i) for i in range(150)}, label2id={str(i): i for i in range(150)})
    net = OneFormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # spread the queries' classes and masks so the map holds several classes
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    net.save_pretrained(folder)
    OneFormerImageProcessor(do_resize=False).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(COMFYUI_DIR / "comfy" / "sd1_tokenizer").save_pretrained(folder)
    return folder


def test_oneformer_equals_transformers_with_controlnet_aux_palette(tmp_path):
    from controlnet_aux.util import ade_palette
    from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

    from lllite_kit.preprocessors import segmentation as seg

    folder = _write_oneformer_folder(tmp_path / "oneformer_ade20k_swin_tiny")
    rng = np.random.default_rng(5)
    import cv2

    pictures = [np.clip(cv2.resize(rng.uniform(0, 255, (32, 48, 3)).astype(np.float32), (96, 64),
                                   interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8) for _ in range(2)]
    processor = OneFormerProcessor.from_pretrained(folder, local_files_only=True)
    model = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(images=pictures, task_inputs=["semantic"] * 2, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], task_inputs=inputs["task_inputs"])
    labels = torch.stack(processor.image_processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 96)] * 2))
    expected = torch.from_numpy(np.array(ade_palette(), np.uint8)[labels.numpy()]).permute(0, 3, 1, 2).float() / 255

    images = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255
    ours = seg.segment(seg.load_segmenter(str(folder)), images, detect_resolution=64)
    assert labels.unique().numel() >= 4  # several classes: a constant map would prove nothing
    same = (ours == expected).all(1).float().mean()
    assert same >= 0.999, same  # float summation order may flip a near-tie between two classes


def test_oneformer_folder_without_its_tokenizer_is_refused(tmp_path):
    from lllite_kit.preprocessors import segmentation as seg
    from lllite_kit.preprocessors import weights as w

    folder = _write_oneformer_folder(tmp_path / "oneformer_ade20k_swin_tiny")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(w.WrongWeightLayout, match="no readable tokenizer.*OneFormer ADE20K"):
        seg.build_segmenter(str(folder))


def test_segmentation_node_runs_a_oneformer_folder(graph, comfy_dirs):
    from PIL import Image

    from lllite_kit.preprocessors import segmentation as seg

    folder = _write_oneformer_folder(comfy_dirs / "models" / "preprocessors" / "oneformer_ade20k_swin_tiny")
    pixels = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(comfy_dirs / "input" / "seg_picture.png")
    graph.run({"1": {"class_type": "LoadImage", "inputs": {"image": "seg_picture.png"}},
               "2": {"class_type": "LLLiteKit_SegmentationADE20K",
                     "inputs": {"image": ["1", 0], "weights": "oneformer_ade20k_swin_tiny", "detect_resolution": 64}},
               "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}})
    out = graph.node_outputs("2")[0][0]
    expected = seg.segment(seg.load_segmenter(str(folder)), torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255, 64)
    assert out.shape == (1, 40, 56, 3)
    assert torch.equal(out, expected.permute(0, 2, 3, 1))


def test_midas_transformers_folder_runs_at_any_size_and_equals_its_own_forward_at_its_size(tmp_path):
    """The folder form is run part by part so the token grid can follow the picture (its own
    forward takes only config.image_size for DPT-Hybrid); at that size the two agree."""
    import tiny_preprocessors as tp

    folder = tp.write_midas_folder(tmp_path / "dpt-hybrid-midas")
    net = midas.build_midas(str(folder)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = net.net(pixel_values=(x - 0.5) / 0.5).predicted_depth
        torch.testing.assert_close(net(x)[:, 0], expected, rtol=0, atol=1e-5 * expected.abs().max().item())
        assert net(torch.rand(1, 3, 64, 128)).shape == (1, 1, 64, 128)
