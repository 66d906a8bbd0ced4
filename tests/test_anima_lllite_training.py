"""Anima LLLite training adapter: what the DiT computes with the adapter attached is what core's
ModelPatchLoader + AnimaLLLiteApply (and our ApplyLLLite) compute from the saved file."""
import pytest
import torch

from anima_testing import context
from lllite_kit.lllite.patch import apply_lllite
from lllite_kit.lllite.weights import read_lllite
from lllite_kit.training.anima.lllite_adapter import AnimaLLLiteAdapter
from lllite_kit.training.anima.masks import random_mask, random_masks
from lllite_kit.training.data.batch import Batch

TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    import tiny_anima

    return tiny_anima.build_anima(seed=0)


@pytest.fixture(scope="module")
def patch_dir(comfy_dirs):
    import folder_paths

    path = comfy_dirs / "models" / "model_patches"
    path.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("model_patches", str(path), is_default=True)
    return path


def _randomize(adapter, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.network.named_parameters():
            if not ("norm" in name and name.endswith("weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _dit(model, x, options=None):
    with torch.no_grad():
        return model.model.diffusion_model(x, torch.full((x.shape[0],), 0.6), context(3).expand(x.shape[0], -1, -1),
                                           transformer_options=dict(options or {}))


def _core(model, name, guide01, mask=None):
    from comfy_extras.nodes_model_patch import AnimaLLLiteApply, ModelPatchLoader

    (patch,) = ModelPatchLoader().load_model_patch(name)
    patched = AnimaLLLiteApply().apply_patch(model, patch, guide01.movedim(1, -1), 1.0, 0.0, 1.0, mask)[0]
    return patched.model_options["transformer_options"]


@pytest.mark.parametrize("inpainting", [False, True], ids=["any", "inpaint"])
def test_training_time_output_is_what_core_computes_from_the_file(model, patch_dir, inpainting):
    dm = model.model.diffusion_model
    guide = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:40, 16:56] = 1
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    bare = _dit(model, x)
    adapter = AnimaLLLiteAdapter(cond_emb_dim=16, network_dim=16, cond_dim=16, inpainting=inpainting)
    adapter.attach(dm, {})
    name = f"trained_{'inpaint' if inpainting else 'any'}.safetensors"
    try:
        assert torch.equal(_dit_with(adapter, model, x, guide, mask), bare)  # up starts at zero: the bare model
        _randomize(adapter, seed=3)
        adapter.train(False)
        trained = _dit_with(adapter, model, x, guide, mask)
        adapter.save(str(patch_dir / name), torch.float32, {})
    finally:
        adapter.detach()
    assert ((trained - bare).abs().max() / bare.abs().max()).item() > 0.05
    core_mask = mask[:, 0] if inpainting else None
    core = _dit(model, x, _core(model, name, guide, core_mask))
    ours = _dit(model, x, apply_lllite(model, read_lllite(str(patch_dir / name)), guide, 1.0, mask=core_mask)
                .model_options["transformer_options"])
    assert ((core - trained).abs().max() / trained.abs().max()).item() < TOL
    assert ((ours - trained).abs().max() / trained.abs().max()).item() < TOL
    assert torch.equal(_dit(model, x), bare)  # hooks gone


def _dit_with(adapter, model, x, guide01, mask):
    with adapter.using_guide(guide01 * 2 - 1, mask if adapter.network.inpainting else None):
        return _dit(model, x)


def test_inpainting_masks_are_sd_scripts_kinds_in_its_proportions_and_sizes():
    """sd-scripts' mask_generator.random_mask: cloud 40 % (a third united with a polygon or a
    shape), polygon 35 %, shape 25 %; cloud coverage 10-30 %, shapes 10-60 % of the picture."""
    g = torch.Generator().manual_seed(0)
    drawn = [random_mask(48, 64, g) for _ in range(300)]
    kinds = [k for _, k in drawn]
    share = {k: sum(x.split("+")[0] == k for x in kinds) / len(kinds) for k in ("cloud", "polygon", "shape")}
    assert abs(share["cloud"] - 0.40) < 0.08 and abs(share["polygon"] - 0.35) < 0.08 and abs(share["shape"] - 0.25) < 0.08
    clouds = [k for k in kinds if k.startswith("cloud")]
    assert abs(sum("+" in k for k in clouds) / len(clouds) - 0.33) < 0.12
    coverage = {k: [m.float().mean().item() for m, x in drawn if x == k] for k in set(kinds)}
    assert 0.09 <= min(coverage["cloud"]) and max(coverage["cloud"]) <= 0.32
    assert 0.07 <= min(coverage["shape"]) and max(coverage["shape"]) <= 0.62  # ellipses: pi/4 of their box
    assert min(coverage["polygon"]) > 0.01 and max(coverage["polygon"]) <= 0.9  # polygons may reach past the border
    masks = random_masks(8, 48, 64, torch.Generator().manual_seed(1))
    assert masks.shape == (8, 1, 48, 64) and masks.unique().tolist() == [0.0, 1.0]
    assert (masks.mean(dim=(1, 2, 3)) > 0).all()  # every sample has a region to repaint, as in sd-scripts
    assert torch.equal(masks, random_masks(8, 48, 64, torch.Generator().manual_seed(1)))  # the run's seed repeats them


def test_batches_draw_inpainting_masks_from_the_run_generator(model):

    adapter = AnimaLLLiteAdapter(cond_emb_dim=8, network_dim=8, cond_dim=8, inpainting=True)
    adapter.attach(model.model.diffusion_model, {})
    try:
        batch = Batch(latents=torch.zeros(2, 16, 8, 8), captions=["a", "b"], original_sizes=[(64, 64)] * 2,
                      crop_top_left=[(0, 0)] * 2, target_sizes=[(64, 64)] * 2, guides=torch.zeros(2, 3, 64, 64))
        adapter.set_batch(batch)
        _randomize(adapter, seed=4)
        x = torch.randn(2, 16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        first, second = _dit(model, x), _dit(model, x)
    finally:
        adapter.detach()
    assert not torch.equal(first, second)  # a new mask per call: the fourth channel is live


def test_train_lllite_on_the_engine_saves_what_core_applies(model, patch_dir, monkeypatch):
    """session.train_lllite (what TrainLLLite runs) on the tiny Anima with its Wan-layout VAE and
    Qwen3 CLIP: Anima's flow schedule, latents through the VAE, text through Qwen3 + llm_adapter;
    the saved v2 inpainting file loads in core's ModelPatchLoader and computes what the trained
    adapter computes (random masks as the fourth channel; any-type differs only by the mask)."""
    import shutil

    import tiny_anima
    from lllite_kit.training import session
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.data import DatasetConfig, SubsetConfig, items_from_tensors

    adapters = []  # the adapter the session builds, to compare with core after training
    build = session.anima_lllite_adapter
    monkeypatch.setattr(session, "anima_lllite_adapter", lambda cfg: adapters.append(build(cfg)) or adapters[-1])
    g = torch.Generator().manual_seed(0)
    images, guides = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a disc", guides))],
                            resolution=(32, 32), batch_size=2)
    cfg = TrainConfig(max_train_steps=1, learning_rate=1e-2, seed=0, save_precision="float", output_name="anima_session",
                      cond_emb_dim=8, network_dim=8, network_args={"inpainting": "true"})
    result = session.train_lllite(cfg, model, tiny_anima.build_anima_clip(0), tiny_anima.build_anima_vae(0), [dataset],
                                  output_dir=patch_dir.parent / "anima_session", holdout=0)
    net = read_lllite(str(result.final_path))
    assert net.inpainting and net.inpaint_masked_input and len(result.losses) == 1
    assert all(torch.isfinite(torch.tensor(result.losses)))
    (adapter,) = adapters
    assert any(v.abs().max() > 0 for k, v in adapter.state_dict().items() if ".up." in k)  # it learned something
    shutil.copy(result.final_path, patch_dir / "engine.safetensors")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    x = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    adapter.attach(model.model.diffusion_model, {})
    adapter.train(False)
    try:
        trained = _dit_with(adapter, model, x, guides[:1], mask)
    finally:
        adapter.detach()
    assert not torch.equal(trained, _dit(model, x))
    core = _dit(model, x, _core(model, "engine.safetensors", guides[:1], mask[:, 0]))
    assert ((core - trained).abs().max() / trained.abs().max()).item() < TOL


def test_samples_during_training_use_the_guide_as_apply_does(model, patch_dir):
    """A sample image during Anima LLLite training (Anima's 16-channel one-frame latent, Wan VAE)
    is what KSampler-style sampling of the bare model + ApplyLLLite(saved file, sample guide)
    draws with the same seed; it differs from the bare model's picture (the guide is live)."""
    import comfy.sample
    import tiny_anima
    from lllite_kit.training import session
    from lllite_kit.training.anima.text import AnimaTextConditioner
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.data import DatasetConfig, SubsetConfig, items_from_tensors

    g = torch.Generator().manual_seed(6)
    images, guides = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    sample_guide = torch.rand(1, 3, 32, 32, generator=g)
    clip, vae = tiny_anima.build_anima_clip(0), tiny_anima.build_anima_vae(0)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a disc", guides))],
                            resolution=(32, 32), batch_size=2)
    cfg = TrainConfig(max_train_steps=1, learning_rate=5e-2, seed=0, save_precision="float", output_name="anima_samples",
                      cond_emb_dim=8, network_dim=8, sample_every_n_steps=1, sample_sampler="euler",
                      sample_prompts="a red disc --n blurry --w 32 --h 32 --s 2 --l 4 --d 5")
    result = session.train_lllite(cfg, model, clip, vae, [dataset], output_dir=patch_dir.parent / "anima_samples",
                                  holdout=0, sample_guide=sample_guide * 2 - 1)
    ((step, (picture,)),) = result.samples
    assert step == 1 and picture.shape == (1, 32, 32, 3) and torch.isfinite(picture).all()

    text = AnimaTextConditioner(clip, model.model.diffusion_model)
    cond = [[text.encode(["a red disc"], "cpu", prompts=True)[0], {}]]
    uncond = [[text.encode(["blurry"], "cpu", prompts=True)[0], {}]]

    def draw(m):
        latent = comfy.sample.fix_empty_latent_channels(m, torch.zeros(1, 4, 4, 4))
        out = comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 5), 2, 4.0, "euler", "normal", cond, uncond,
                                  latent, disable_pbar=True, seed=5)
        return vae.decode(out).reshape(1, 32, 32, 3).clamp(0, 1)

    applied = draw(apply_lllite(model, read_lllite(str(result.final_path)), sample_guide, 1.0))
    assert (applied - picture).abs().max().item() < 1e-4
    assert (draw(model) - picture).abs().max().item() > 1e-3


def disk_task(n: int, size: int = 64, seed: int = 0):
    """(images, guides) in [0, 1]: a white disk on black at a random place, and its outline. The
    guide's picture-wide colour would not do here: the v2 conditioning tower's GroupNorms
    normalise each guide's channels over the picture, so the position is what it can see."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, guides = [], []
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
        r = (torch.rand(1, generator=g) * 0.1 + 0.15) * size
        d = ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        images.append((d <= r).float().expand(3, -1, -1))
        guides.append(((d - r).abs() <= 1.5).float().expand(3, -1, -1))
    return torch.stack(images), torch.stack(guides)


def test_control_gap_is_zero_at_start_and_clearly_positive_after_training(model, tmp_path):
    """Anima's flow target (noise - x0) holds the noise at every noise level, which a random DiT
    cannot predict; the disk's place, which only the guide tells, is what the LLLite can add.
    The "VAE" is an 8x8 average pool (the disk itself, in all 16 channels)."""
    import tiny_anima
    from lllite_kit.training.anima.model import trainable_anima
    from lllite_kit.training.anima.text import AnimaTextConditioner
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.control_gap import ControlGap
    from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
    from lllite_kit.training.engine import TrainHooks, TrainingEngine
    from lllite_kit.training.lora import training_metadata
    from lllite_kit.training.session import data_facts

    steps = 40
    images, guides = disk_task(16)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a white disc", guides))],
                            resolution=(64, 64), batch_size=2)
    data = TrainingData([dataset], encode_latents=lambda im: torch.nn.functional.avg_pool2d(im, 8).repeat(1, 6, 1, 1)[:, :16],
                        vae_id="avg-pool-8", seed=0, size_multiple=32, require_guides=True, holdout=4)
    # noise levels uniform over ComfyUI's shift-3 table (sd-scripts' "sigma" with shift 3): the default
    # logit-normal draw, centred on s = 0.5, shows no gap yet after 40 steps of this tiny task
    cfg = TrainConfig(max_train_steps=steps, learning_rate=5e-2, seed=0, validate_every_n_steps=steps // 2,
                      save_precision="float", output_name="anima_gap", timestep_sampling="sigma", discrete_flow_shift=3.0)
    with torch.inference_mode(False):
        text = AnimaTextConditioner(tiny_anima.build_anima_clip(0), model.model.diffusion_model)
        text.precompute(data.fixed_captions())
        with trainable_anima(model) as tm:
            adapter = AnimaLLLiteAdapter(cond_emb_dim=8, network_dim=8, cond_dim=8)
            hooks = TrainHooks()
            facts = {**data_facts(data)[0], "sd_model_name": "tiny"}
            engine = TrainingEngine(cfg, tm, text, adapter, data, tmp_path, training_metadata, facts, hooks=hooks)
            hooks.evaluate = ControlGap(tm, text, adapter, data.holdout_batches(), (cfg.min_timestep, cfg.max_timestep))
            evaluations = engine.run().evaluations
    assert [s for s, _ in evaluations] == [0, steps // 2, steps]
    start, end = evaluations[0][1], evaluations[-1][1]
    assert abs(start["control_gap"]) < 1e-6  # up starts at zero: the guide changes nothing yet
    assert end["heldout_correct"] < start["heldout_correct"]
    assert end["control_gap"] > 0.01 and end["control_gap"] > 0.01 * end["heldout_correct"], end


def test_output_blocks_option_is_refused_for_anima_by_name():
    from lllite_kit.training.anima.lllite_adapter import anima_lllite_adapter
    from lllite_kit.training.config import TrainConfig

    with pytest.raises(ValueError, match="lllite_output_blocks: Anima's DiT has no output blocks"):
        anima_lllite_adapter(TrainConfig(lllite_output_blocks=True))
    assert isinstance(anima_lllite_adapter(TrainConfig()), AnimaLLLiteAdapter)
