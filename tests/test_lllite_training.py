"""LLLite training on the tiny SDXL model: the control gap shows the control being learned, the
saved file predicts through the apply patch what the training-time model predicted, and the
file is kohya's format.

The synthetic task is Fill50K's idea (seed 004): the guide is a circle's outline drawn in a
colour, the image the disk filled with that colour on grey; the "VAE" is a fixed 8x8 average
pool, so the target latents are a function of the guide alone. Two adjustments make the
task learnable by a random tiny U-Net in a few dozen steps: v-prediction at high noise
(there v ~ -x0, which a guide predicts directly; an eps target needs the denoising a random
U-Net lacks), and a unit scale on the U-Net's last norm (the fixture's is ~0.02, which caps
the output far below the target).
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from lllite_kit.lllite.module import kohya_name
from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.control_gap import ControlGap, draw_training_curves, shuffled_guides
from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.engine import TrainHooks, TrainingEngine
from lllite_kit.training.lllite_adapter import LLLiteAdapter
from lllite_kit.training.lora import training_metadata
from lllite_kit.training.session import data_facts

E, R = 8, 16
STEPS = 40


def fill_task(n: int, size: int = 64, seed: int = 0, centre: tuple[float, float] = (0.35, 0.65),
              radius: tuple[float, float] = (0.25, 0.40)):
    """(images, guides) in [0, 1]: a disk filled with a colour on grey, and its outline in that
    colour; centre and radius: the ranges they are drawn from, as fractions of the size."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, guides = [], []
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=g) * (centre[1] - centre[0]) + centre[0]) * size
        r = (torch.rand(1, generator=g) * (radius[1] - radius[0]) + radius[0]) * size
        colour = (torch.rand(3, 1, 1, generator=g) > 0.5).float()
        d = ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        inside = (d <= r).float()
        images.append(inside * colour + (1 - inside) * 0.5)
        guides.append(((d - r).abs() <= 1.5).float() * colour)
    return torch.stack(images), torch.stack(guides)


def pooled_latents(images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] -> 4-channel 8x-downscaled 'latents': the filled disk itself."""
    p = F.avg_pool2d(images, 8)
    return torch.cat([p, p[:, :1]], 1)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One training run of the fill task; yields what the tests inspect, inside the training context."""
    out = tmp_path_factory.mktemp("lllite_train")
    images, guides = fill_task(36)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                            resolution=(64, 64), batch_size=2)
    data = TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=0, size_multiple=32,
                        require_guides=True, holdout=4)
    model, clip = tiny.build_model("sdxl", seed=0), tiny.build_clip("sdxl", seed=0)
    with torch.no_grad():
        model.model.diffusion_model.out[0].weight.fill_(1.0)
    cfg = TrainConfig(max_train_steps=STEPS, learning_rate=3e-2, seed=0, v_parameterization=True, min_timestep=500,
                      validate_every_n_steps=STEPS // 2, save_precision="float", output_name="fill_lllite")
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sdxl")
        text.precompute(data.fixed_captions())
        with trainable_model(model, v_parameterization=True) as tm:
            adapter = LLLiteAdapter("sdxl", E, R, name="fill_lllite")
            hooks = TrainHooks()
            engine = TrainingEngine(cfg, tm, text, adapter, data, out, training_metadata,
                                    {**data_facts(data)[0], "sd_model_name": "tiny"}, hooks=hooks)
            hooks.evaluate = ControlGap(tm, text, adapter, data.holdout_batches(), (cfg.min_timestep, cfg.max_timestep))
            result = engine.run()
            yield {"tm": tm, "text": text, "adapter": adapter, "data": data, "result": result, "model": model}


def test_control_gap_is_zero_at_start_and_clearly_positive_after_training(trained):
    evaluations = trained["result"].evaluations
    assert [s for s, _ in evaluations] == [0, STEPS // 2, STEPS]
    start, end = evaluations[0][1], evaluations[-1][1]
    assert abs(start["control_gap"]) < 1e-6  # kohya's init (up weight 0): the guide changes nothing yet
    assert end["heldout_correct"] < start["heldout_correct"]
    assert end["control_gap"] > 0.005 and end["control_gap"] > 0.01 * end["heldout_correct"], end
    curve = draw_training_curves(trained["result"].losses, evaluations)
    assert curve.shape == (1, 500, 640, 3) and 0.0 <= curve.min() and curve.max() <= 1.0


def _prediction_inputs(trained, g: torch.Generator):
    """(held-out batch, noisy latents, timesteps 100-900, text context, SDXL adm vector) for one U-Net call."""
    tm = trained["tm"]
    batch = trained["data"].holdout_batches()[0]
    x = torch.randn(batch.latents.shape, generator=g)
    t = torch.linspace(100, 900, x.shape[0]).long()
    context, pooled = trained["text"].encode(batch.captions, tm.device)
    return batch, x, t, context, tm.adm(pooled, batch.original_sizes, batch.crop_top_left, batch.target_sizes)


def test_saved_file_applied_by_the_inference_patch_predicts_like_training(trained):
    tm, adapter = trained["tm"], trained["adapter"]
    path = trained["result"].final_path
    batch, x, t, context, y = _prediction_inputs(trained, torch.Generator().manual_seed(3))
    with torch.no_grad():
        bare = tm.predict(x, t, context, y)
        adapter.attach(tm.diffusion_model, {})
        adapter.train(False)
        adapter.set_batch(batch)
        try:
            training = tm.predict(x, t, context, y)
        finally:
            adapter.detach()
        patched = apply_lllite(tm.patcher, read_lllite(str(path)), (batch.guides + 1) / 2)
        applied = tm.predict(x, t, context, y, transformer_options=patched.model_options["transformer_options"])
    assert (training - bare).abs().max() > 1e-2 * bare.abs().max()  # the trained control matters
    assert torch.allclose(applied, training, rtol=1e-4, atol=1e-5 * training.abs().max().item())



def test_output_block_network_predicts_in_training_as_the_apply_patch_does(trained, tmp_path):
    """lllite_output_blocks: the adapter's hooks on the decoder's transformers compute what the
    inference patch computes from the saved file (random weights, the up projections too)."""
    tm = trained["tm"]
    adapter = LLLiteAdapter("sdxl", E, R, name="out_blocks", output_blocks=True)
    g = torch.Generator().manual_seed(5)
    batch, x, t, context, y = _prediction_inputs(trained, g)
    with torch.no_grad():
        adapter.attach(tm.diffusion_model, {})
        try:
            for _, p in sorted(adapter.network.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            adapter.train(False)
            adapter.set_batch(batch)
            training = tm.predict(x, t, context, y)
            adapter.save(str(tmp_path / "out_blocks.safetensors"), torch.float32, {})
        finally:
            adapter.detach()
        network = read_lllite(str(tmp_path / "out_blocks.safetensors"))
        assert network.layout_name() == "SDXL with output blocks"
        assert {p.split(".")[1] for p in network.paths.values() if p.startswith("output_blocks.")} == {str(i) for i in range(6)}
        patched = apply_lllite(tm.patcher, network, (batch.guides + 1) / 2)
        applied = tm.predict(x, t, context, y, transformer_options=patched.model_options["transformer_options"])
        bare = tm.predict(x, t, context, y)
    assert (training - bare).abs().max() > 1e-2 * bare.abs().max()
    assert torch.allclose(applied, training, rtol=1e-4, atol=1e-5 * training.abs().max().item())


def test_sample_images_use_the_sample_guide_fitted_as_the_apply_node_fits_it(trained):
    """Samples during training: adapter.using_guide (what GuidedSamples wraps around each render)
    with a guide of another shape predicts what the apply node predicts with that guide."""
    tm, text, adapter = trained["tm"], trained["text"], trained["adapter"]
    g = torch.Generator().manual_seed(4)
    guide = torch.rand(1, 3, 96, 64, generator=g)  # taller than the 64x64 picture: cropped
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([600])
    context, pooled = text.encode(["a filled circle"], tm.device)
    y = tm.adm(pooled, [(64, 64)], [(0, 0)], [(64, 64)])
    with torch.no_grad():
        adapter.attach(tm.diffusion_model, {})
        adapter.train(False)
        try:
            with adapter.using_guide(guide * 2 - 1):
                sampled = tm.predict(x, t, context, y)
        finally:
            adapter.detach()
        patched = apply_lllite(tm.patcher, read_lllite(str(trained["result"].final_path)), guide, resize_mode="crop")
        applied = tm.predict(x, t, context, y, transformer_options=patched.model_options["transformer_options"])
    assert torch.allclose(applied, sampled, rtol=1e-4, atol=1e-5 * sampled.abs().max().item())

def test_file_is_kohya_format_and_reads_back_with_dims_and_depths(trained):
    path = trained["result"].final_path
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.title"] == "fill_lllite"
    assert meta["ss_network_module"] == "networks.control_net_lllite" and meta["ss_cond_emb_dim"] == str(E)

    dm = trained["tm"].diffusion_model
    # kohya's SDXL layout: every attn1 q/k/v and attn2 q of input blocks 4, 5 (depth 2), 7, 8 and the middle (depth 3)
    blocks = {"input_blocks.4.1": 2, "input_blocks.5.1": 2, "input_blocks.7.1": 3, "input_blocks.8.1": 3, "middle_block.1": 3}
    expected = {}
    for name, module in dm.named_modules():
        prefix, _, rest = name.partition(".transformer_blocks.")
        if prefix in blocks and rest.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")):
            expected[kohya_name(name)] = (blocks[prefix], module.in_features)
    assert len(expected) == 136 and len(shapes) == 1600
    # what kohya's ComfyUI node and Advanced-ControlNet do: group by the text before the first ".",
    # depth from the conditioning keys, dims from the shapes
    grouped = {}
    for key, shape in shapes.items():
        module, _, param = key.partition(".")
        grouped.setdefault(module, {})[param] = shape
    assert set(grouped) == set(expected) and all("lllite" in k for k in shapes)
    for module, params in grouped.items():
        depth, width = expected[module]
        found = 3 if "conditioning1.4.weight" in params else (2 if params["conditioning1.2.weight"][-1] == 4 else 1)
        assert found == depth
        assert params["conditioning1.0.weight"] == (E // 2, 3, 4, 4)
        assert params["down.0.weight"] == (R, width) and params["mid.0.weight"] == (R, R + E) and params["up.0.weight"] == (width, R)
        if depth == 3:
            assert params["conditioning1.2.weight"] == (E // 2, E // 2, 4, 4) and params["conditioning1.4.weight"] == (E, E // 2, 2, 2)
        else:
            assert params["conditioning1.2.weight"] == (E, E // 2, 4, 4)

    network = read_lllite(str(path))
    modules = {network.paths[k]: network.module(k) for k in network.paths}
    assert {(m.cond_emb_dim, m.mlp_dim) for m in modules.values()} == {(E, R)}
    assert {kohya_name(p): m.depth for p, m in modules.items()} == {k: d for k, (d, _) in expected.items()}
    saved = trained["adapter"].state_dict()
    assert all(torch.equal(v, saved[k].cpu()) for k, v in network.state_dict().items())


def test_shuffle_gives_every_image_another_guide_also_across_batches_and_sizes(trained):
    batches = trained["data"].holdout_batches()
    correct, shuffled = shuffled_guides(batches)
    assert sum(b.latents.shape[0] for b in correct) == 4
    for c, s in zip(correct, shuffled):
        assert torch.equal(c.latents, s.latents)
        assert all(not torch.equal(c.guides[i], s.guides[i]) for i in range(c.guides.shape[0]))
    singles = [dataclasses.replace(b, latents=b.latents[i:i + 1], guides=b.guides[i:i + 1], captions=b.captions[i:i + 1])
               for b in batches for i in range(b.latents.shape[0])]
    c1, s1 = shuffled_guides(singles)  # batch-1 held-out slices: guides move across batches
    assert len(c1) == 4 and torch.equal(s1[0].guides[0], c1[1].guides[0]) and torch.equal(s1[3].guides[0], c1[0].guides[0])
    tall = dataclasses.replace(singles[0], guides=torch.rand(1, 3, 96, 64) * 2 - 1)  # alone in its bucket
    _, s2 = shuffled_guides(singles + [tall])
    assert s2[-1].guides.shape == (1, 3, 96, 64) and torch.equal(s2[0].guides[0], c1[1].guides[0])
    with pytest.raises(ValueError, match="at least 2 held-out images"):
        shuffled_guides(singles[:1])
