"""Reading and writing kohya-format LLLite files; clear errors for everything else."""
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lllite_kit.lllite.module import SD15_LAYOUT, SDXL_LAYOUT, LLLiteModule, build_network, layout_for
from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite, save_lllite
from lllite_testing import full_sdxl_unet, random_network


@pytest.fixture(scope="module")
def sdxl(tiny):
    return tiny.build_model("sdxl", seed=0)


@pytest.fixture(scope="module")
def sd15(tiny):
    return tiny.build_model("sd15", seed=0)


def test_saved_file_has_kohyas_keys_shapes_and_metadata(sdxl, tmp_path):
    path = tmp_path / "canny.safetensors"
    network = random_network(sdxl, "sdxl")
    save_lllite(str(path), network)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        shape = lambda k: tuple(f.get_slice(k).get_shape())  # noqa: E731
        q = "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
        assert shape(f"{q}.conditioning1.0.weight") == (4, 3, 4, 4)
        assert shape(f"{q}.conditioning1.2.weight") == (8, 4, 4, 4)  # depth 2: image/16
        assert shape(f"{q}.down.0.weight") == (16, 64)
        assert shape(f"{q}.mid.0.weight") == (16, 24)
        assert shape(f"{q}.up.0.weight") == (64, 16)
        m = "lllite_unet_middle_block_1_transformer_blocks_9_attn2_to_q"
        assert shape(f"{m}.conditioning1.4.weight") == (8, 4, 2, 2)  # depth 3: image/32
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    modules = {k.split(".")[0] for k in keys}
    assert len(modules) == 136 and all(k.startswith("lllite_unet_") for k in keys)
    assert len(keys) == 16 * 10 + 120 * 12  # depth-2 modules have 5 weight/bias pairs, depth-3 six
    assert [p.name for p in tmp_path.iterdir()] == ["canny.safetensors"]  # atomic write left no temp file

    loaded = read_lllite(str(path))
    assert loaded.describe() == "136 modules, cond_emb_dim 8 / network_dim 16, SDXL layout"
    loaded_state = loaded.state_dict()
    assert all(torch.equal(loaded_state[k], v) for k, v in network.state_dict().items())


def test_full_size_sdxl_layout_is_kohyas_release(tiny):
    """E32/R64 on the real SDXL U-Net (built on the meta device) gives exactly the tensor and
    parameter counts of kohya's controllllite_v01032064e_sdxl_* files."""
    with torch.device("meta"):
        network = build_network(full_sdxl_unet("meta"), SDXL_LAYOUT, 32, 64)
    state = network.state_dict()
    assert len(state) == 1600
    assert sum(t.numel() for t in state.values()) == 22_969_600


def test_output_block_layout_follows_kohyas_depth_rule_and_reads_back(sdxl, sd15, tmp_path):
    """kohya's SKIP_OUTPUT_BLOCKS = False: SDXL's output 0-2 get depth 3, 3-5 depth 2 (kohya's
    rule); SD1.5's decoder, one level deeper, gets the depth whose stride is its token grid."""
    for model, family, want, architecture in (
            (sdxl, "sdxl", {0: 3, 1: 3, 2: 3, 3: 2, 4: 2, 5: 2}, "stable-diffusion-xl-v1-base/control-net-lllite"),
            (sd15, "sd15", {3: 3, 4: 3, 5: 3, 6: 2, 7: 2, 8: 2, 9: 1, 10: 1, 11: 1}, "stable-diffusion-v1/control-net-lllite")):
        path = tmp_path / f"{family}_out.safetensors"
        save_lllite(str(path), random_network(model, family, output_blocks=True))
        network = read_lllite(str(path))
        layout = network.layout()
        assert layout is not None and layout.display.endswith("with output blocks")
        assert network.describe().endswith(f"{layout.display} layout")
        depths = {p.split(".transformer_blocks")[0]: network.module(k).depth for k, p in network.paths.items()}
        assert {int(b.split(".")[1]): d for b, d in depths.items() if b.startswith("output_blocks")} == want
        base = SDXL_LAYOUT if family == "sdxl" else SD15_LAYOUT
        assert {b: d for b, d in depths.items() if not b.startswith("output_blocks")} == base.blocks
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["modelspec.architecture"] == architecture
    with torch.device("meta"):  # full size, E32/R64: twice kohya's released modules
        full = build_network(full_sdxl_unet("meta"), layout_for("sdxl", output_blocks=True), 32, 64).state_dict()
    assert len(full) == 3280 and sum(t.numel() for t in full.values()) == 46_721_920


def test_depth_and_dims_are_read_from_shapes(sd15, tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_lllite(str(path), random_network(sd15, "sd15", cond_emb_dim=16, mlp_dim=8), dtype=torch.float16)
    network = read_lllite(str(path))
    assert network.describe() == "28 modules, cond_emb_dim 16 / network_dim 8, SD1.5 layout"
    depths = {p.split(".transformer_blocks")[0]: network.module(k).depth for k, p in network.paths.items()}
    assert depths == SD15_LAYOUT.blocks
    assert next(network.parameters()).dtype == torch.float16  # the file's values, unconverted
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v1/control-net-lllite"


def _write(path, tensors):
    save_file({k: torch.zeros(v) for k, v in tensors.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("keys, looks_like", [
    ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": (4, 2),
      "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": (2, 4)}, "a LoRA"),
    ({"input_hint_block.0.weight": (16, 3, 3, 3), "zero_convs.0.0.weight": (4, 4, 1, 1)}, "a full ControlNet"),
    ({"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3)}, "a full ControlNet"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3)}, "a Stable Diffusion checkpoint"),
])
def test_other_model_files_are_named(tmp_path, keys, looks_like):
    path = _write(tmp_path / "x.safetensors", keys)
    with pytest.raises(ValueError, match=f"x.safetensors is not a ControlNet-LLLite file: it looks like {looks_like}"):
        read_lllite(path)


def test_truncated_and_corrupt_files_are_named(sdxl, tmp_path):
    good = tmp_path / "good.safetensors"
    save_lllite(str(good), random_network(sdxl, "sdxl"))
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(4096))
    for name in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(ValueError, match=f"{name} .* is not a readable safetensors file: it looks truncated or corrupt"):
            read_lllite(str(tmp_path / name))


def test_incomplete_module_and_stray_keys_are_named(sdxl, tmp_path):
    state = random_network(sdxl, "sdxl").state_dict()
    name = "lllite_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_v"
    broken = {k: v for k, v in state.items() if k != f"{name}.up.0.weight"}
    save_file(broken, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match=f"a.safetensors: LLLite module {name} is incomplete.*up.0.weight"):
        read_lllite(str(tmp_path / "a.safetensors"))
    save_file({**state, "lllite_unet_output_head.weight": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="b.safetensors: keys that are not kohya LLLite module parameters"):
        read_lllite(str(tmp_path / "b.safetensors"))


def test_family_mismatch_fails_before_sampling_naming_both(sdxl, sd15):
    guide = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError) as err:
        apply_lllite(sd15, random_network(sdxl, "sdxl", name="xl.safetensors"), guide)
    msg = str(err.value)
    assert "LLLite 'xl.safetensors' (136 modules, cond_emb_dim 8 / network_dim 16, SDXL layout)" in msg
    assert "does not fit the model 'SD1.5 (TinySD15)'" in msg
    assert "input_blocks.4.1.transformer_blocks.1.attn1.to_q" in msg

    with pytest.raises(ValueError, match=r"LLLite 'v15' \(28 modules.*SD1.5 layout\) does not fit the model 'SDXL \(TinySDXL\)'"):
        apply_lllite(sdxl, random_network(sd15, "sd15", name="v15"), guide)


def test_module_structure_is_kohyas():
    m = LLLiteModule(in_dim=64, cond_emb_dim=8, mlp_dim=16, depth=3)
    assert [type(l).__name__ for l in m.conditioning1] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert torch.count_nonzero(m.up[0].weight) == 0 and torch.count_nonzero(m.up[0].bias) > 0
    assert m.embed(torch.zeros(1, 3, 96, 64)).shape == (1, 8, 3, 2)
    assert LLLiteModule(64, 8, 16, 1).embed(torch.zeros(1, 3, 96, 64)).shape == (1, 8, 12, 8)
