"""ControlNet training's own options and the engine's, on the tiny SD1.5 model as the node runs
them (train_controlnet: VAE-encoded, cached latents and text): control_strength is core's apply
strength (the file, applied by core at that strength, predicts what training predicted);
guide_dropout blacks out guides while training only; only_mid_control leaves the zero
convolutions at zero; an sd-scripts subset with conditioning_data_dir trains with AdamW8bit,
full_bf16, min-SNR, noise offset, checkpointing, accumulation and a scheduler; Cancel and a NaN loss stop
the run with the model given back."""
import pytest
import safetensors.torch
import torch

import comfy.model_management
from controlnet_testing import build_model, core_and_training_predictions, write_controlnet
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.controlnet.adapter import ControlNetAdapter
from lllite_kit.training.controlnet.train import train_controlnet
from lllite_kit.training.data import DatasetConfig, SubsetConfig, items_from_tensors
from lllite_kit.training.engine import TrainHooks, TrainingDiverged
from lllite_kit.training.state import load_state, state_path_for
from test_lllite_training import fill_task


def _dataset(images, guides):
    return DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                         resolution=(64, 64), batch_size=2)


def _train(tiny, out, datasets, hooks=None, model=None, **kw):
    cfg_keys = {k: kw.pop(k) for k in list(kw) if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{"max_train_steps": 2, "learning_rate": 1e-3, "seed": 0, "save_precision": "float",
                         "output_name": "cn", **cfg_keys})
    model = model or build_model("sd15", seed=0)
    result = train_controlnet(cfg, model, tiny.build_clip("sd15", seed=0), tiny.build_vae(0), datasets, output_dir=out,
                              holdout=0, hooks=hooks, **kw)
    return result, model


def test_control_strength_is_cores_apply_strength(tiny, comfy_dirs):
    model = build_model("sd15", seed=0)
    write_controlnet(comfy_dirs / "models" / "controlnet" / "strength.safetensors", model)
    config = model.model.model_config.unet_config
    adapter = ControlNetAdapter(config, "sd15", str(comfy_dirs / "models" / "controlnet" / "strength.safetensors"), strength=0.6)
    _, bare, core_06, ours = core_and_training_predictions(model, adapter, "strength.safetensors", "sd15", strength=0.6)
    _, _, core_1, _ = core_and_training_predictions(model, adapter, "strength.safetensors", "sd15")
    scale = core_1.abs().max().item()
    assert (core_1 - core_06).abs().max() > 1e-2 * (core_1 - bare).abs().max()  # the strength matters
    assert torch.allclose(ours, core_06, rtol=1e-5, atol=1e-5 * scale), (ours - core_06).abs().max()


def test_guide_dropout_blacks_out_guides_in_training_only():
    x = torch.zeros(64, 4, 2, 2)
    adapter = ControlNetAdapter({}, "sd15", guide_dropout=0.5)
    adapter._guides = torch.ones(64, 3, 16, 16)  # white guides in [-1, 1]
    adapter.training = True
    torch.manual_seed(0)
    kept = adapter.hint_for(x).flatten(1).amax(1)
    assert set(kept.tolist()) == {0.0, 1.0} and 16 <= kept.sum() <= 48  # whole guides black (0) or kept
    adapter.training = False
    assert torch.equal(adapter.hint_for(x), torch.ones(64, 3, 16, 16))  # samples and held-out loss see every guide
    with pytest.raises(ValueError, match=r"guide_dropout must be in \[0, 1\]"):
        ControlNetAdapter({}, "sd15", guide_dropout=1.5)


def test_sd_scripts_subset_with_engine_options_and_only_mid_control(tiny, tmp_path):
    """A conditioning_data_dir subset; AdamW8bit (8-bit states in the saved training state),
    full_bf16 (bf16 weights), min-SNR, noise offset, gradient checkpointing, accumulation 2,
    cosine schedule; latents and text cached before training. only_mid_control: the skip zero convolutions get no gradient
    and stay exactly zero, the middle one learns."""
    pytest.importorskip("bitsandbytes")
    from PIL import Image

    images, guides = fill_task(4)
    for i in range(4):
        for folder, pictures in (("img", images), ("cond", guides)):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray((pictures[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / folder / f"{i}.png")
        (tmp_path / "img" / f"{i}.caption").write_text("a filled circle")
    subset = SubsetConfig(image_dir=tmp_path / "img", conditioning_data_dir=tmp_path / "cond")
    dataset = DatasetConfig(subsets=[subset], resolution=(64, 64), batch_size=1)
    phases = []
    result, _ = _train(tiny, tmp_path / "out", [dataset], TrainHooks(phase=phases.append), only_mid_control=True,
                       optimizer_type="AdamW8bit", min_snr_gamma=5.0, noise_offset=0.1, gradient_checkpointing=True,
                       gradient_accumulation_steps=2, lr_scheduler="cosine", mixed_precision="bf16", full_bf16=True,
                       max_train_steps=1)
    assert len(result.losses) == 1 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(p.startswith("caching latents") for p in phases) and any(p.startswith("caching text") for p in phases)
    state = load_state(state_path_for(result.final_path))
    quantised = [s["__bnb_optimizer_quant_state__"] for s in state["optimizer"]["state"].values()
                 if "__bnb_optimizer_quant_state__" in s]
    assert quantised and quantised[0]["state1"].dtype == torch.uint8  # bitsandbytes' 8-bit AdamW states
    assert state["adapter"]["middle_block_out.0.weight"].dtype == torch.bfloat16  # full_bf16: the trained weights too
    sd = safetensors.torch.load_file(str(result.final_path))
    zero_convs = [v for k, v in sd.items() if k.startswith("control_model.zero_convs.")]
    assert zero_convs and not any(v.any() for v in zero_convs)
    assert sd["control_model.middle_block_out.0.weight"].abs().max() > 0


def test_cancel_and_nan_stop_the_run_and_give_the_model_back(tiny, tmp_path):
    images, guides = fill_task(2)

    def cancel_after_first_step(step, total, loss):
        comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

    hooks = TrainHooks(progress=cancel_after_first_step,
                       check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
    model = build_model("sd15", seed=0)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _train(tiny, tmp_path / "cancel", [_dataset(images, guides)], hooks, model, max_train_steps=5)
    assert not model.model.diffusion_model._forward_pre_hooks  # the ControlNet hook is gone
    bad = guides.clone()
    bad[:, :, :4, :4] = float("nan")  # the ControlNet turns a NaN guide into a NaN loss
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        _train(tiny, tmp_path / "nan", [_dataset(images, bad)])


def test_the_step_where_the_gap_rose_is_reported_from_that_evaluation_on():
    from lllite_kit.nodes.controlnet_nodes import evaluation_text, gap_rose_at

    def gap(g, loss=0.4):
        return {"control_gap": g, "heldout_correct": loss, "heldout_shuffled": loss + g}

    seen = [(0, gap(0.0)), (10, gap(0.019))]  # 4.75 % of the held-out loss: not yet
    assert gap_rose_at(seen) == -1 and "rose" not in evaluation_text(seen)
    seen.append((20, gap(0.03)))
    assert gap_rose_at(seen) == 20 and evaluation_text(seen).endswith("; the control gap rose clearly at step 20")
    seen.append((30, gap(0.001)))  # a later dip does not move the step
    assert gap_rose_at(seen) == 20 and evaluation_text(seen).startswith("control gap +0.001 ")
    assert evaluation_text(seen).endswith("at step 20")


def test_sd_unlocked_u_net_file_loads_in_cores_diffusion_model_loader(tiny, tmp_path):
    """sd_locked=False's second file, <name>_unet.safetensors, is a whole U-Net that core's
    Load Diffusion Model (comfy.sd.load_diffusion_model) detects as SD1.5 and loads with the
    trained decoder and the base's encoder, beside a ControlNet file core loads too."""
    import comfy.controlnet
    import comfy.sd
    import comfy.supported_models
    from checkpoint_files import detectable_sd15

    base = detectable_sd15(tiny)  # SD1.5 widths (core detects the family from them), one level
    original = {k: v.clone() for k, v in base.diffusion_model.state_dict().items()}
    adapter = ControlNetAdapter(base.model_config.unet_config, "sd15", sd_locked=False)
    adapter.attach(base.diffusion_model, {})
    with torch.no_grad():
        for p in adapter._decoder.values():
            p.add_(0.01)  # as training moves it
    trained = {k: v.clone() for k, v in base.diffusion_model.state_dict().items()}
    adapter.save(str(tmp_path / "cn.safetensors"), torch.float32, {})
    adapter.detach()
    loaded = comfy.sd.load_diffusion_model(str(tmp_path / "cn_unet.safetensors"))
    assert type(loaded.model.model_config) is comfy.supported_models.SD15
    sd = loaded.model.diffusion_model.state_dict()
    assert set(sd) == set(trained) and all(torch.equal(sd[k], v.to(sd[k].dtype)) for k, v in trained.items())
    assert not torch.equal(trained["out.2.weight"], original["out.2.weight"])
    assert torch.equal(trained["input_blocks.1.0.in_layers.2.weight"], original["input_blocks.1.0.in_layers.2.weight"])
    assert isinstance(comfy.controlnet.load_controlnet(str(tmp_path / "cn.safetensors")), comfy.controlnet.ControlNet)
