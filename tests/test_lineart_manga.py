"""Manga lineart (erika.pth). No installable package ships this network (controlnet-aux 0.0.10
has no manga_line), so the suite cannot compare against a reference implementation; the
module layout is the published file's (checked by loading a file in that layout with
"module." prefixes) and the pipeline is checked against the network run by hand."""
import numpy as np
import pytest
import torch

from lllite_kit.preprocessors import lineart_manga as lm
from lllite_kit.preprocessors import weights


def _randomised(width=2, head=2, seed=0) -> lm.MangaLineNet:
    torch.manual_seed(seed)
    net = lm.MangaLineNet(width=width, head_width=head).eval()
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
        net.conv15.model[2].bias.fill_(128.0)  # paper around mid-grey, so the clamp does not hide the map
    return net


@pytest.fixture(scope="module")
def erika(tmp_path_factory):
    net = _randomised()
    path = tmp_path_factory.mktemp("manga") / "erika.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # DataParallel names, as published
    return net, str(path)


def test_public_layout_has_the_published_module_names():
    sd = lm.MangaLineNet().state_dict()
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) \
        == 43_100_147
    for key in ("block0.model.0.conv1.model.0.running_var", "block1.model.2.shortcut.model.0.weight",
                "block4.model.11.residual.model.2.weight", "block5.model.0.conv1.model.2.weight",
                "block5.model.0.shortcut.model.0.weight", "block9.model.1.residual.model.2.bias",
                "conv15.model.2.weight"):
        assert key in sd
    assert not any(k.startswith("res") for k in sd)  # the skip additions have no weights


def test_map_is_the_inverted_network_output_on_8_bit_grey(erika):
    net, path = erika
    torch.manual_seed(1)
    picture = torch.rand(2, 3, 48, 64)
    ours = lm.lineart_manga(lm.load_lineart_manga(path), picture, detect_resolution=0)
    gray = (0.299 * picture[:, 0:1] + 0.587 * picture[:, 1:2] + 0.114 * picture[:, 2:3]) * 255
    with torch.no_grad():
        expected = 1.0 - net(gray.round()).clamp(0, 255) / 255
    assert ours.shape == (2, 1, 48, 64)
    assert (ours - expected).abs().max() < 1e-5
    assert ours.std() > 1e-3


def test_any_picture_size_comes_back_at_its_own_size(erika):
    _, path = erika
    out = lm.lineart_manga(lm.load_lineart_manga(path), torch.rand(1, 1, 37, 53), detect_resolution=40)
    assert out.shape == (1, 1, 37, 53) and 0 <= out.min() and out.max() <= 1


def test_other_files_are_refused_by_name(tmp_path):
    from lllite_kit.preprocessors.lineart_realistic import Generator

    torch.save(Generator(width=4, residual_blocks=1).state_dict(), tmp_path / "sk_model.pth")
    with pytest.raises(weights.WrongWeightLayout, match="MangaLineExtraction"):
        lm.build_lineart_manga(str(tmp_path / "sk_model.pth"))


def test_node_reads_erika_and_a_missing_file_names_where_it_is_published(graph, comfy_dirs):
    from PIL import Image

    path = comfy_dirs / "models" / "preprocessors" / "erika.pth"
    earlier = path.read_bytes() if path.exists() else None  # another test's fixture may have put one there
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "manga_picture.png"}},
              "2": {"class_type": "LLLiteKit_LineartManga",
                    "inputs": {"image": ["1", 0], "weights": "erika.pth", "detect_resolution": 64}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(comfy_dirs / "input" / "manga_picture.png")
    try:
        path.unlink(missing_ok=True)
        with pytest.raises(Exception, match=r"erika\.pth.*huggingface\.co/lllyasviel/Annotators"):
            graph.run(prompt)
        torch.save(_randomised().state_dict(), path)
        graph.run(prompt)
        out = graph.node_outputs("2")[0][0]
        assert out.shape == (1, 40, 56, 3) and 0 <= out.min() and out.max() <= 1
    finally:
        if earlier is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(earlier)
