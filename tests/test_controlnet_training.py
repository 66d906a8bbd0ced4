"""ControlNet training on the one engine (tiny SD1.5, the Fill50K-like synthetic task of the
LLLite tests): the control gap is exactly 0 at the start (zero convolutions) and clearly positive
after 20 steps (filled-disk guides), the
saved file is what core loads, a resumed run ends where the uninterrupted one does, and
sd_locked=False trains and saves the decoder while the graph's model keeps its weights; SDXL
trains end to end and its file, loaded and applied by core, predicts what training predicted;
bf16 and fp16 mixed precision train; samples during training use the sample guide."""
import json

import pytest
import torch
from PIL import Image

import comfy.controlnet
from controlnet_testing import build_model, core_and_training_predictions, write_controlnet
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.control_gap import ControlGap
from lllite_kit.training.controlnet.adapter import ControlNetAdapter, unet_file_for
from lllite_kit.training.controlnet.train import train_controlnet
from lllite_kit.training.controlnet.weights import read_controlnet
from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.data.fill50k import subset_from_fill50k
from lllite_kit.training.engine import TrainHooks, TrainingEngine
from lllite_kit.training.lora import training_metadata
from lllite_kit.training.session import data_facts
from lllite_kit.training.state import state_path_for
from test_lllite_training import fill_task, pooled_latents

STEPS = 20


def filled_guides(images: torch.Tensor) -> torch.Tensor:
    """fill_task's disks as guides: each disk filled with its colour on black (the picture with
    its grey background blacked out), a guide the picture's latent follows pixel for pixel."""
    return torch.where(images == 0.5, 0.0, images)


def _run(tiny, out, steps=STEPS, holdout=4, images=8, family="sd15", filled=False, batch_size=2, **kw):
    cfg_keys = {k: kw.pop(k) for k in ("resume", "save_every_n_steps", "save_last_n_steps", "output_name", "mixed_precision",
                                       "min_timestep") if k in kw}
    images, guides = fill_task(images)
    if filled:
        guides = filled_guides(images)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                            resolution=(64, 64), batch_size=batch_size)
    data = TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=0, size_multiple=64,
                        require_guides=True, holdout=holdout)
    model, clip = build_model(family, seed=0), tiny.build_clip(family, seed=0)
    cfg = TrainConfig(**{"max_train_steps": steps, "learning_rate": 2e-3, "seed": 0, "v_parameterization": True,
                         "min_timestep": 500, "validate_every_n_steps": steps, "save_precision": "float",
                         "output_name": "fill_cn", **cfg_keys})
    with torch.inference_mode(False):
        text = TextConditioner(clip, family)
        text.precompute(data.fixed_captions())
        with trainable_model(model, cfg.mixed_precision, v_parameterization=True) as tm:
            adapter = ControlNetAdapter(model.model.model_config.unet_config, family, **kw)
            hooks = TrainHooks()
            engine = TrainingEngine(cfg, tm, text, adapter, data, out, training_metadata,
                                    {**data_facts(data)[0], "sd_model_name": "tiny"}, hooks=hooks)
            if holdout:
                hooks.evaluate = ControlGap(tm, text, adapter, data.holdout_batches(), (cfg.min_timestep, cfg.max_timestep))
            result = engine.run()
    return result, adapter, model


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """The gap rises within STEPS only with what makes the guide worth learning at once: the filled
    disk as guide (an outline's signal fades in the hint encoder: no rise in 20 steps), high noise
    (t >= 900: the noisy latent hides the disk, only the guide shows it) and batch 8 (steadier
    gradients for the product of the zero-initialised last hint convolution and zero convolutions;
    batch 2 has the gap at 0.0 % of the loss at step 20). docs/controlnet.md has the curve."""
    return _run(tiny, tmp_path_factory.mktemp("cn_train"), images=36, filled=True, batch_size=8, min_timestep=900)


def test_control_gap_is_exactly_zero_at_start_and_positive_after_training(trained):
    result, adapter, _ = trained
    (s0, start), (s1, end) = result.evaluations
    assert (s0, s1) == (0, STEPS)
    assert start["control_gap"] == 0.0  # zero convolutions: the guide changes nothing yet
    assert end["heldout_correct"] < start["heldout_correct"]
    assert end["control_gap"] > 0.05 * end["heldout_correct"], end  # clearly: the node's gap_rose_at_step threshold
    assert adapter.control.zero_convs[0][0].weight.abs().max() > 0  # the zero convolutions learned


def test_saved_file_is_lllyasviels_layout_and_loads_in_core(trained):
    result, adapter, _ = trained
    sd = read_controlnet(str(result.final_path))
    assert set(sd) == set(adapter.control.state_dict())
    control = comfy.controlnet.load_controlnet(str(result.final_path))
    loaded = control.control_model.state_dict()
    assert all(torch.equal(loaded[k].float(), v.float().cpu()) for k, v in adapter.control.state_dict().items())


def test_resume_ends_where_the_uninterrupted_run_ends(tiny, tmp_path):
    full, _, _ = _run(tiny, tmp_path / "full", steps=2, holdout=0, save_every_n_steps=1, save_last_n_steps=5)
    state = state_path_for(tmp_path / "full" / "fill_cn-step00000001.safetensors")
    assert state.is_file()
    resumed, _, _ = _run(tiny, tmp_path / "resumed", steps=2, holdout=0, resume=str(state))
    a, b = read_controlnet(str(full.final_path)), read_controlnet(str(resumed.final_path))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sd_unlocked_trains_and_saves_the_decoder_and_gives_the_model_back(tiny, tmp_path):
    result, adapter, model = _run(tiny, tmp_path, steps=1, holdout=0, sd_locked=False)
    original = build_model("sd15", seed=0).model.diffusion_model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.model.diffusion_model.state_dict().items())  # restored
    import safetensors.torch
    unet = safetensors.torch.load_file(str(unet_file_for(result.final_path)))
    assert set(unet) == set(original)
    changed = {k for k in unet if not torch.equal(unet[k], original[k])}
    assert changed and all(k.startswith(("output_blocks.", "out.")) for k in changed)


def test_fill50k_folder_is_read_as_it_is_and_problems_are_listed_together(tmp_path):
    images, guides = fill_task(3, size=64)
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    lines = []
    for i in range(3):
        Image.fromarray((guides[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "source" / f"{i}.png")
        Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "target" / f"{i}.png")
        lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": f"circle {i}"}))
    (tmp_path / "prompt.json").write_text("\n".join(lines) + "\n")
    subset = subset_from_fill50k(tmp_path)
    assert [(i.caption, i.guide.name, i.size) for i in subset.items] == [(f"circle {i}", f"{i}.png", (64, 64)) for i in range(3)]

    (tmp_path / "prompt.json").write_text("\n".join(lines + ['{"source": "source/9.png", "target": "target/9.png", "prompt": "x"}',
                                                             "not json"]) + "\n")
    (tmp_path / "source" / "1.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError) as e:
        subset_from_fill50k(tmp_path)
    text = str(e.value)
    assert "9.png" in text and "prompt.json:5" in text and "1.png" in text


def test_sdxl_trains_and_the_file_core_loads_predicts_like_the_training_model(tiny, comfy_dirs):
    result, adapter, model = _run(tiny, comfy_dirs / "models" / "controlnet", steps=1, holdout=0, images=2, family="sdxl",
                                  output_name="fill_cn_sdxl")
    assert len(result.losses) == 1 and all(torch.isfinite(torch.tensor(result.losses)))
    assert adapter.layout == "lllyasviel"  # a tiny SDXL: core's diffusers detection would not know sd-scripts' layout
    assert adapter.control.middle_block_out[0].weight.abs().max() > 0  # trained
    control, bare, core_out, ours = core_and_training_predictions(model, adapter, "fill_cn_sdxl.safetensors", "sdxl")
    scale = core_out.abs().max().item()
    assert (core_out - bare).abs().max() > 1e-2 * scale, (core_out - bare).abs().max()  # the trained control acts
    assert torch.allclose(ours, core_out, rtol=1e-5, atol=1e-5 * scale), (ours - core_out).abs().max()


def test_fp16_mixed_precision_trains_with_finite_loss(tiny, tmp_path):
    """fp16 autocast with the engine's loss scaler (bf16: the samples test below)."""
    result, adapter, _ = _run(tiny, tmp_path, steps=1, holdout=0, images=2, mixed_precision="fp16")
    assert all(torch.isfinite(torch.tensor(result.losses))), result.losses
    assert result.final_path.is_file()
    assert adapter.control.zero_convs[0][0].weight.abs().max() > 0


def test_bf16_run_renders_samples_with_the_sample_guide(tiny, tmp_path):
    """train_controlnet as the node calls it (VAE-encoded data, bf16 autocast, a sample every
    step): each run renders its sample through the ControlNet with the sample guide, so two
    guides give two pictures (the start file's control acts from step 0)."""
    start = write_controlnet(tmp_path / "start.safetensors", build_model("sd15", seed=0))
    images, guides = fill_task(2)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                            resolution=(64, 64), batch_size=2)
    samples = []
    for i, guide in enumerate((guides[:1], 1 - guides[:1])):
        cfg = TrainConfig(max_train_steps=1, learning_rate=1e-4, seed=0, mixed_precision="bf16", save_precision="float",
                          sample_prompts="a filled circle --w 64 --h 64 --s 2", sample_every_n_steps=1, output_name=f"s{i}")
        result = train_controlnet(cfg, build_model("sd15", seed=0), tiny.build_clip("sd15", seed=0), tiny.build_vae(0),
                                  [dataset], output_dir=tmp_path, holdout=0, sample_guide=guide * 2 - 1,
                                  control_weights=str(start))
        assert result.final_path.is_file() and all(torch.isfinite(torch.tensor(result.losses)))
        [(step, [image])] = result.samples
        assert step == 1 and image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
        samples.append(image)
    assert (samples[0] - samples[1]).abs().max() > 1e-3
