"""comfy_bridge: the model's own noise schedule, leaving inference mode, gradient
checkpointing, SDXL size conditioning, text-encoder caching and release, the VAE encoder."""
import pytest
import torch

import comfy.model_management
import comfy.model_sampling
from lllite_kit.training.comfy_bridge import (NoiseSchedule, TextConditioner, UnsupportedModel, latent_encoder,
                                              set_gradient_checkpointing, trainable_model, vae_identity)
from training_helpers import TinyAdapter


def _sampling(kind):
    class Sampling(comfy.model_sampling.ModelSamplingDiscrete, kind):
        pass

    return Sampling(None)


@pytest.mark.parametrize("kind", [comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION])
def test_noise_schedule_is_comfyuis_own(kind):
    ms = _sampling(kind)
    schedule = NoiseSchedule(ms)
    assert schedule.v_prediction == (kind is comfy.model_sampling.V_PREDICTION)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    sigma = ms.sigmas[t]
    x_noisy = ms.noise_scaling(sigma, noise, x0.clone())  # x0 + sigma * noise: ComfyUI's latent space
    torch.testing.assert_close(schedule.noisy_input(x0, noise, t), ms.calculate_input(sigma, x_noisy))
    torch.testing.assert_close(ms.timestep(sigma), t)  # the U-Net gets the integer timestep back
    # a perfect prediction of the target denoises to x0 through ComfyUI's own formula
    torch.testing.assert_close(ms.calculate_denoised(sigma, schedule.target(x0, noise, t), x_noisy), x0, rtol=1e-4, atol=1e-3)


def test_schedules_the_trainer_cannot_use_are_refused():
    with pytest.raises(UnsupportedModel, match="epsilon and v-prediction"):
        NoiseSchedule(_sampling(comfy.model_sampling.X0))
    with pytest.raises(UnsupportedModel, match="discrete DDPM"):
        NoiseSchedule(comfy.model_sampling.ModelSamplingContinuousEDM(None))


@pytest.fixture(scope="module")
def graph_models(tiny):
    """Tiny SD1.5 and SDXL as a graph hands them over: built under inference mode."""
    with torch.inference_mode():
        return {f: (tiny.build_model(f, 0), tiny.build_clip(f, 0)) for f in ("sd15", "sdxl")}


def test_trainable_model_escapes_inference_mode(graph_models):
    model, _ = graph_models["sd15"]
    dm = model.model.diffusion_model
    assert any(p.is_inference() for p in dm.parameters())
    before = {k: v.clone() for k, v in list(dm.state_dict().items())[:5]}
    adapter = TinyAdapter()
    with torch.inference_mode(False):
        with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode(), trainable_model(model):
            pass
        with trainable_model(model) as tm:
            assert not any(p.is_inference() or p.requires_grad for p in tm.diffusion_model.parameters())
            adapter.attach(tm.diffusion_model, {})
            x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 77, 40)
            tm.predict(x, t, ctx, None).square().mean().backward()  # "Inference tensors cannot be saved for backward" before
            adapter.detach()
    assert all(p.grad is not None for p in adapter.params.values())
    assert all(p.grad.abs().sum() > 0 for k, p in adapter.params.items() if k.endswith(".up"))  # "down" waits for up != 0
    for k, v in before.items():
        assert torch.equal(dm.state_dict()[k], v)


def test_v_parameterization_patches_only_the_training_clone(graph_models):
    model, _ = graph_models["sd15"]
    with torch.inference_mode(False), trainable_model(model, v_parameterization=True, zero_terminal_snr=True) as tm:
        assert tm.schedule.v_prediction and tm.schedule.prediction_type == "v"
        assert isinstance(tm.patcher.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
        assert tm.schedule.alphas_cumprod[-1].item() < 1e-6  # zero terminal SNR
    assert not isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)


def test_gradient_checkpointing_gives_the_same_gradients(graph_models):
    model, _ = graph_models["sdxl"]
    g = torch.Generator().manual_seed(2)
    x, ctx, y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 88, generator=g), torch.randn(2, 1584, generator=g)
    t = torch.tensor([100, 700])
    grads = []
    with torch.inference_mode(False), trainable_model(model) as tm:
        for checkpointing in (False, True):
            adapter = TinyAdapter(dropout=0.0)
            adapter.attach(tm.diffusion_model, {})
            with torch.no_grad():
                for k, p in adapter.params.items():
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(k)))
            n = set_gradient_checkpointing(tm.diffusion_model, checkpointing)
            assert not checkpointing or n > 20
            opts = {}
            tm.predict(x, t, ctx, y, transformer_options=opts).square().mean().backward()
            adapter.detach()
            grads.append({k: p.grad.clone() for k, p in adapter.params.items()})
        set_gradient_checkpointing(tm.diffusion_model, False)
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


def test_sdxl_size_conditioning_is_the_models_own(graph_models):
    for family in ("sdxl", "sd15"):
        model, _ = graph_models[family]
        pooled = torch.randn(2, 48)
        with torch.inference_mode(False), trainable_model(model) as tm:
            y = tm.adm(pooled, [(1024, 768), (512, 512)], [(0, 32), (0, 0)], [(1024, 768), (512, 512)])
        if family == "sd15":
            assert y is None
            continue
        want = model.model.encode_adm(pooled_output=pooled[1:], width=512, height=512, crop_w=0, crop_h=0, target_width=512, target_height=512)
        torch.testing.assert_close(y[1:], want)
        first = model.model.encode_adm(pooled_output=pooled[:1], width=768, height=1024, crop_w=32, crop_h=0, target_width=768, target_height=1024)
        torch.testing.assert_close(y[:1], first)


def test_text_outputs_are_cached_then_the_encoders_released(graph_models):
    _, clip = graph_models["sdxl"]
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sdxl")
        long = ", ".join(["a very long caption"] * 30)
        text.precompute(["a cat", long])
        direct = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
        text.release()
        assert text.clip is None
        assert not any(m.model is not None and m.model.is_clone(clip.patcher) for m in comfy.model_management.current_loaded_models)
        context, pooled = text.encode(["a cat", long], "cpu")
        assert context.shape == (2, 154, 88) and pooled.shape == (2, 48)
        torch.testing.assert_close(context[:1, :77], direct[0])
        torch.testing.assert_close(context[:1, 77:], direct[0])  # repeated up to the batch's length
        torch.testing.assert_close(pooled[:1], direct[1])
        with pytest.raises(RuntimeError, match="'a dog' was not encoded before the text encoders were released"):
            text.encode(["a dog"], "cpu")


def test_latent_encoder_scales_and_vae_identity_tracks_weights(tiny):
    vae = tiny.build_vae(0)
    model = tiny.build_model("sd15", 0)
    fmt = model.model.latent_format
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = latent_encoder(vae, fmt)(images)
    assert latents.shape == (2, 4, 8, 8)
    raw = vae.encode(((images + 1) / 2).movedim(1, -1))
    torch.testing.assert_close(latents, fmt.process_in(raw))
    ident = vae_identity(vae, fmt)
    assert ident == vae_identity(vae, fmt)
    with torch.no_grad():
        next(vae.first_stage_model.parameters()).add_(0.01)
    assert vae_identity(vae, fmt) != ident
    assert vae_identity(vae, tiny.build_model("sdxl", 0).model.latent_format) != vae_identity(vae, fmt)
