"""Depth Anything V1 and V2 files share one layout and differ in which encoder layers feed
the depth head: the loader takes the version from the user, the published file name or a
folder's config, and never guesses."""
import pytest
import torch

from lllite_kit.preprocessors import depth_anything as da
from lllite_kit.preprocessors.weights import WrongWeightLayout

import tiny_preprocessors as tp

# An 8-layer encoder: V1 taps the last four layers, V2's rule for other depths each quarter's last.
V1_TAPS, V2_TAPS = (5, 6, 7, 8), (2, 4, 6, 8)


def _tiny(taps):
    """The tiny model with its last layer scaled and lifted above the final ReLU, so depth varies."""
    net = tp.tiny_depth_anything(0, layers=8, taps=taps)
    with torch.no_grad():
        net.head.conv3.weight.mul_(100.0)
        net.head.conv3.bias.fill_(10.0)
    return net


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory):
    d = tmp_path_factory.mktemp("depth_anything")
    sd = tp.to_original_depth_anything(_tiny(V1_TAPS).state_dict())
    for name in ("depth_anything_vits14.pth", "depth_anything_v2_vits.pth", "my_depth.pth"):
        torch.save(sd, d / name)
    return d


def _predict(net, x):
    with torch.no_grad():
        return net(pixel_values=x).predicted_depth


@pytest.mark.parametrize("name, choice, taps", [
    ("depth_anything_vits14.pth", "auto", V1_TAPS),     # V1's published name
    ("depth_anything_v2_vits.pth", "auto", V2_TAPS),    # V2's published name
    ("my_depth.pth", "V1", V1_TAPS),                    # renamed: the user says which
    ("depth_anything_v2_vits.pth", "V1", V1_TAPS),      # the user's choice wins over the name
])
def test_version_decides_the_encoder_layers_the_head_reads(eight_layers, name, choice, taps):
    net = da.build_depth_anything(str(eight_layers / name), choice).net
    assert net.config.backbone_config.out_indices == list(taps)
    x = torch.rand(1, 3, 56, 56)
    ours = _predict(net, x)
    assert ours.std() > 1e-3  # a map, not the ReLU's zeros
    assert torch.equal(ours, _predict(_tiny(taps), x))


def test_v1_and_v2_readings_of_one_file_differ(eight_layers):
    x = torch.rand(1, 3, 56, 56)
    v1 = _predict(da.build_depth_anything(str(eight_layers / "my_depth.pth"), "V1").net, x)
    v2 = _predict(da.build_depth_anything(str(eight_layers / "my_depth.pth"), "V2").net, x)
    assert (v1 - v2).abs().max() > 1e-3


def test_a_file_whose_name_says_neither_is_refused_with_the_choice_to_make(eight_layers):
    with pytest.raises(WrongWeightLayout, match=r"my_depth\.pth.*Set the node's version to V1 or V2"):
        da.build_depth_anything(str(eight_layers / "my_depth.pth"))


def test_a_folder_config_decides_and_a_contradicting_choice_is_refused(tmp_path):
    folder = tmp_path / "Depth-Anything-Small-hf"
    _tiny(V1_TAPS).save_pretrained(folder)
    assert da.build_depth_anything(str(folder)).net.config.backbone_config.out_indices == list(V1_TAPS)
    assert da.build_depth_anything(str(folder), "V1").net.config.backbone_config.out_indices == list(V1_TAPS)
    with pytest.raises(WrongWeightLayout, match=r"encoder layers \[5, 6, 7, 8\].*not Depth Anything V2"):
        da.build_depth_anything(str(folder), "V2")
