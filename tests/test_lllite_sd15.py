"""The SD1.5 LLLite layout (docs/lllite_sd15.md): kohya's depth rule on SD1.5's blocks, files
saved and read in kohya's format, applied at any size; the middle block (latent/8) gets the depth-3
embedding (image/32) averaged 2x2."""
import torch
import torch.nn.functional as F

from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite, save_lllite
from lllite_testing import random_network, sample, unet


def test_sd15_lllite_file_applies_at_any_size(tiny, tmp_path):
    model = tiny.build_model("sd15", seed=0)
    path = tmp_path / "sd15_canny.safetensors"
    save_lllite(str(path), random_network(model, "sd15", seed=1))
    network = read_lllite(str(path))
    blocks = {p.split(".transformer_blocks")[0] for p in network.paths.values()}
    assert blocks == {"input_blocks.1.1", "input_blocks.2.1", "input_blocks.4.1", "input_blocks.5.1",
                      "input_blocks.7.1", "input_blocks.8.1", "middle_block.1"}
    guide = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    patched = apply_lllite(model, network, guide)

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = unet(patched, x, family="sd15", cond_or_uncond=(1, 0))
    assert ((out - unet(model, x, family="sd15", cond_or_uncond=(1, 0))).abs().max() / out.abs().max()) > 1e-3
    control = patched.model_options["transformer_options"]["patches"]["attn1_patch"][0].controls[0]
    (cache,) = control._sizes.values()
    key = "lllite_unet_middle_block_1_transformer_blocks_0_attn2_to_q"
    module = control._placed.module(key)
    pooled = F.avg_pool2d(module.embed(cache.guide), 2).flatten(2).transpose(1, 2)
    assert torch.allclose(cache.projected[((key,), 1, 1)], module.project_embedding(pooled), atol=1e-6)

    odd = torch.randn(1, 4, 13, 9, generator=torch.Generator().manual_seed(4))  # 72x104 pixels
    assert torch.isfinite(unet(patched, odd, family="sd15")).all()
    assert torch.isfinite(sample(patched, torch.zeros(1, 4, 13, 9), steps=2, family="sd15")).all()


def test_sd15_output_blocks_embed_on_their_blocks_token_grids(tiny):
    """SD1.5's decoder (output 3-5 at latent/4, 6-8 at /2, 9-11 at /1) gets depths 3, 2, 1: each
    module's guide embedding has exactly its block's token grid, so nothing is pooled."""
    model = tiny.build_model("sd15", seed=0)
    network = random_network(model, "sd15", seed=1, output_blocks=True)
    patched = apply_lllite(model, network, torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    out = unet(patched, x, family="sd15")
    assert ((out - unet(model, x, family="sd15")).abs().max() / out.abs().max()) > 1e-3
    control = patched.model_options["transformer_options"]["patches"]["attn1_patch"][0].controls[0]
    (cache,) = control._sizes.values()
    seen = set()
    for keys, h, w in cache.projected:
        for key in keys:
            path = network.paths[key]
            if path.startswith("output_blocks."):
                assert control._placed.module(key).embed(cache.guide).shape[-2:] == (h, w), path
                seen.add(int(path.split(".")[1]))
    assert seen == set(range(3, 12))
