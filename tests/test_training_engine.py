"""The training loop on the tiny SDXL model: learning, exact resume, cancel, divergence,
mixed precision. A minimal adapter and dataset (training_helpers) stand in for LoRA and the
data side where the test is about the loop itself."""
import pytest
import safetensors.torch
import torch

import comfy.model_management
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainHooks, TrainingDiverged, TrainingEngine
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lllite_kit.training.state import load_state, state_path_for
from training_helpers import ListData, TinyAdapter, eval_loss, no_metadata, unit_group_norms


def _prepared(tiny, family, **options):
    """A tiny model as a graph hands it over (built under inference mode), made trainable."""
    with torch.inference_mode():
        model, clip = tiny.build_model(family, 0), tiny.build_clip(family, 0)
        unit_group_norms(model)
    with torch.inference_mode(False):
        with trainable_model(model, **options) as tm:
            text = TextConditioner(clip, tm.family)
            text.precompute(ListData(6).captions)
            yield tm, text


@pytest.fixture(scope="module")
def sdxl(tiny):
    yield from _prepared(tiny, "sdxl")


@pytest.fixture(scope="module")
def sd15(tiny):
    yield from _prepared(tiny, "sd15")


@pytest.fixture(scope="module")
def sd15_v(tiny):
    yield from _prepared(tiny, "sd15", v_parameterization=True)


def _engine(tm, text, out, adapter=None, data=None, hooks=None, **options):
    cfg = TrainConfig(**{"learning_rate": 1e-3, "max_train_steps": 6, "output_name": "t", **options})
    return TrainingEngine(cfg, tm, text, adapter or TinyAdapter(), data or ListData(), out, no_metadata, hooks=hooks)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_lora_loss_falls_on_a_tiny_overfit_set(family, request, tmp_path):
    tm, text = request.getfixturevalue(family)
    data = ListData(n=2, bs=2)
    adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=4.0, train_text_encoder=False), tm.model_config)
    adapter.attach(tm.diffusion_model, {})
    before = eval_loss(tm, text, data)
    result = _engine(tm, text, tmp_path, adapter, data, learning_rate=1e-2, max_train_steps=8).run()
    adapter.attach(tm.diffusion_model, {})
    adapter.train(False)
    after = eval_loss(tm, text, data)
    adapter.detach()
    assert after < 0.9 * before, (before, after)
    assert len(result.losses) == 8 and result.steps == 8
    assert result.final_path == tmp_path / "t.safetensors" and result.final_path.is_file()
    assert state_path_for(result.final_path).is_file()


def test_resume_gives_the_uninterrupted_weights(sdxl, tmp_path):
    """3 batches per epoch with gradient accumulation 2: the state at step 3 sits mid-epoch."""
    tm, text = sdxl
    options = dict(max_train_steps=6, save_every_n_steps=3, gradient_accumulation_steps=2, lr_scheduler="cosine",
                   lr_warmup_steps=2, optimizer_type="AdamW", noise_offset=0.05, min_snr_gamma=5.0,
                   save_last_n_steps_state=6)  # keep the step-3 state (by default only the newest state stays)
    whole = TinyAdapter()
    full = _engine(tm, text, tmp_path / "a", whole, ListData(n=6), **options).run()
    assert [p.name for p in full.saved] == ["t-step00000003.safetensors", "t.safetensors"]
    state = load_state(state_path_for(full.saved[0]))
    assert (state["step"], state["epoch"], state["batch"]) == (3, 1, 2)

    resumed_adapter = TinyAdapter(seed=99)  # different start: everything must come from the state
    resumed = _engine(tm, text, tmp_path / "b", resumed_adapter, ListData(n=6), resume=str(state_path_for(full.saved[0])),
                      **options).run()
    assert resumed.losses == full.losses
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed_adapter.state_dict()[k], v), k


def test_cancel_stops_within_a_step_and_keeps_the_last_saved_file(sdxl, tmp_path):
    tm, text = sdxl
    seen = []

    def progress(step, total, loss):
        seen.append(step)
        if step == 3:
            comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

    hooks = TrainHooks(progress=progress, check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
    engine = _engine(tm, text, tmp_path, hooks=hooks, max_train_steps=10, save_every_n_steps=2)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        engine.run()
    assert seen == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-step00000002-state.pt", "t-step00000002.safetensors"]
    assert safetensors.torch.load_file(tmp_path / "t-step00000002.safetensors")
    assert not tm.diffusion_model.middle_block[1].transformer_blocks[0].attn1.to_out[0]._forward_hooks  # adapter detached


def test_nan_loss_stops_with_a_clear_error_and_keeps_saved_files(sdxl, tmp_path):
    tm, text = sdxl
    engine = _engine(tm, text, tmp_path, data=ListData(n=4, nan_at=(1, 1)), max_train_steps=10, save_every_n_steps=1)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4 .*t-step00000003\.safetensors"):
        engine.run()
    assert (tmp_path / "t-step00000003.safetensors").is_file() and not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_loss(sdxl, tmp_path, precision):
    tm, text = sdxl
    tm.compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    try:
        engine = _engine(tm, text, tmp_path, max_train_steps=2, mixed_precision=precision)
        result = engine.run()
        assert (engine.scaler is not None) == (precision == "fp16")
    finally:
        tm.compute_dtype = torch.float32
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert any(v.abs().sum() > 0 for k, v in engine.adapter.state_dict().items() if k.endswith(".up"))


def test_a_seed_fixes_the_run_and_evaluations_do_not_disturb_it(sdxl, tmp_path):
    tm, text = sdxl
    runs = [_engine(tm, text, tmp_path / str(seed), TinyAdapter(), max_train_steps=3, seed=seed).run() for seed in (5, 5, 6)]
    assert runs[0].losses == runs[1].losses and runs[0].losses != runs[2].losses
    hooks = TrainHooks(evaluate=lambda step: {"noise": torch.randn(()).item(), "step": step})  # draws from the global RNG
    watched = _engine(tm, text, tmp_path / "eval", TinyAdapter(), hooks=hooks, max_train_steps=3, seed=5, validate_every_n_steps=2).run()
    assert watched.losses == runs[0].losses
    assert [(s, e["step"]) for s, e in watched.evaluations] == [(0, 0), (2, 2), (3, 3)]


@pytest.mark.parametrize("options", [
    {"loss_type": "huber", "huber_schedule": "snr", "huber_c": 0.1},
    {"loss_type": "smooth_l1", "huber_schedule": "exponential"},
    {"multires_noise_iterations": 4, "multires_noise_discount": 0.3, "min_timestep": 100, "max_timestep": 900},
    {"optimizer_type": "Lion", "lr_scheduler": "polynomial", "lr_warmup_steps": 1, "noise_offset": 0.1, "adaptive_noise_scale": 0.01},
    {"optimizer_type": "SGDNesterov", "lr_scheduler": "cosine_with_restarts", "gradient_accumulation_steps": 2},
], ids=["huber", "smooth_l1", "multires", "lion", "sgd"])
def test_option_paths_train(sd15, tmp_path, options):
    tm, text = sd15
    engine = _engine(tm, text, tmp_path, max_train_steps=2, **options)
    result = engine.run()
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(v.abs().sum() > 0 for k, v in engine.adapter.state_dict().items() if k.endswith(".up"))


def test_v_prediction_model_trains_on_velocity(sd15_v, tmp_path, monkeypatch):
    """The engine's target, fed to ComfyUI's own v-prediction formula with the input the U-Net
    saw, gives back the clean latents: it is the velocity sqrt(a) n - sqrt(1-a) x0 (an epsilon
    target would give x0 / (1 + sigma^2) instead)."""
    import lllite_kit.training.engine as engine_module

    tm, text = sd15_v
    assert tm.schedule.v_prediction
    seen = {}

    def watch(name, fn, pick=lambda args, out: out):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.setdefault(name, pick(args, out))
            return out
        return wrapper

    monkeypatch.setattr(engine_module, "training_noise", watch("noise", engine_module.training_noise))
    monkeypatch.setattr(engine_module, "sample_timesteps", watch("t", engine_module.sample_timesteps))
    monkeypatch.setattr(engine_module, "per_sample_loss", watch("target", engine_module.per_sample_loss, lambda a, _: a[1]))
    monkeypatch.setattr(tm.schedule, "noisy_input", watch("x0", tm.schedule.noisy_input, lambda a, _: a[0]))
    monkeypatch.setattr(tm, "predict", watch("x_in", tm.predict, lambda a, _: a[0]))
    result = _engine(tm, text, tmp_path, TinyAdapter(dropout=0.0), ListData(n=2, bs=2), max_train_steps=2, min_snr_gamma=5.0).run()
    assert all(torch.isfinite(torch.tensor(result.losses)))

    ms = tm.schedule.model_sampling  # ComfyUI's sampling object: the formulas the sampler uses
    x0, noise, target = seen["x0"].float(), seen["noise"].float(), seen["target"].float()
    sigma = ms.sigmas[seen["t"].cpu()].float()
    noised = ms.noise_scaling(sigma, noise, x0)  # x0 + sigma n
    torch.testing.assert_close(seen["x_in"].float(), ms.calculate_input(sigma, noised), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ms.calculate_denoised(sigma, target, noised), x0, rtol=1e-4, atol=1e-4)
    a = (1 / (1 + sigma**2)).view(-1, 1, 1, 1)
    torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * x0, rtol=1e-5, atol=1e-5)