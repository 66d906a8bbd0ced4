"""ControlNet -> ControlNet-LLLite distillation on a tiny SD1.5 model, with a ControlNet file
core ComfyUI loads: the teacher is exactly core's guided prediction, the distillation loss
falls, the LLLite-patched model ends closer to the teacher than the bare model is, and the
saved file is an ordinary LLLite file.

Data: the Fill50K-like task of test_lllite_training (disk outline as the guide, its 8x8
average pool as the latent); no target image enters the loss, only the teacher."""
import pytest
import torch

import comfy.controlnet
import controlnet_testing as cf
from lllite_kit.lllite.weights import read_lllite
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.distill.adapter import DistillationAdapter
from lllite_kit.training.distill.evaluate import TeacherAgreement
from lllite_kit.training.distill.teacher import ControlNetTeacher
from lllite_kit.training.engine import TrainHooks, TrainingEngine
from lllite_kit.training.lora import training_metadata
from lllite_kit.training.session import data_facts
from test_lllite_training import fill_task, pooled_latents

STEPS = 24


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    model, clip = cf.build_model(seed=0, head_channels=16), tiny.build_clip("sd15", seed=0)
    control = comfy.controlnet.load_controlnet(str(cf.write_controlnet(out / "cn" / "tiny_cn.safetensors", model)))
    images, guides = fill_task(6)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                            resolution=(64, 64), batch_size=2)
    data = TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=0, size_multiple=32,
                        require_guides=True, holdout=2)
    cfg = TrainConfig(max_train_steps=STEPS, learning_rate=1e-2, seed=0, min_timestep=200, max_timestep=800,
                      save_precision="float", output_name="distilled", cond_emb_dim=8, network_dim=16)
    teacher = ControlNetTeacher(control, strength=1.0, name="tiny_cn.safetensors")
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sd15")
        text.precompute(data.fixed_captions())
        with trainable_model(model) as tm:
            adapter = DistillationAdapter(tm, teacher, "sd15", cond_emb_dim=8, network_dim=16, name="distilled")
            hooks = TrainHooks(progress=lambda step, total, loss: print(f"step {step}/{total} loss {loss:.5f}", flush=True),
                               evaluated=lambda step, r: print(f"step {step}: {r}", flush=True))
            engine = TrainingEngine(cfg, tm, text, adapter, data, out, training_metadata,
                                    {**data_facts(data)[0], "sd_model_name": "tiny"}, hooks=hooks)
            hooks.evaluate = TeacherAgreement(tm, text, adapter, data.holdout_batches(), (200, 800), timesteps=2)
            result = engine.run()
            yield {"tm": tm, "text": text, "control": control, "teacher": teacher, "result": result, "data": data}


def test_teacher_is_core_guided_prediction(run):
    """The target equals what core's sampler computes: get_control at the sigma, then the
    model's apply_model (eps recovered from its denoised output)."""
    tm, text, control = run["tm"], run["text"], run["control"]
    batch = run["data"].holdout_batches()[0]
    t = torch.tensor([700, 200])
    noise = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(3))
    context, _ = text.encode(batch.captions, tm.device)
    with torch.inference_mode(False), torch.no_grad():
        x_in = tm.schedule.noisy_input(batch.latents, noise, t)
        ours = run["teacher"].predict(tm, x_in, t, context, None, batch.guides)
        sigma = tm.schedule.sigmas[t]
        x = batch.latents + sigma.view(-1, 1, 1, 1) * noise
        c = control.copy().set_cond_hint((batch.guides + 1) / 2, 1.0)
        base = tm.patcher.model
        c.pre_run(base, lambda p: base.model_sampling.percent_to_sigma(p))
        denoised = base.apply_model(x, sigma, c_crossattn=context, control=c.get_control(x, sigma, {"c_crossattn": context}, 1, {}))
        core = (x - denoised) / sigma.view(-1, 1, 1, 1)
        bare = tm.predict(x_in, t, context, None)
    assert torch.allclose(ours, core, atol=1e-4, rtol=1e-4), (ours - core).abs().max()
    assert (ours - bare).abs().mean() > 0.05  # the control acts


def test_distillation_loss_falls_and_student_approaches_the_teacher(run):
    """The held-out distillation loss (fixed noise and timesteps: the training loss without its
    sampling noise) falls, and ends below the bare model's distance to the teacher."""
    result = run["result"]
    assert len(result.losses) == STEPS
    (s0, start), *_, (s1, end) = result.evaluations
    assert (s0, s1) == (0, STEPS)
    # kohya's init (up weight 0, bias not): the LLLite starts as a small guide-independent shift
    assert start["student_mse"] == pytest.approx(start["bare_mse"], rel=0.2)
    assert end["student_mse"] < 0.85 * start["student_mse"], result.evaluations
    assert end["student_mse"] < 0.9 * end["bare_mse"], result.evaluations
    print(f"\nheld-out MSE to the teacher after {STEPS} steps: LLLite {end['student_mse']:.4f}, "
          f"bare model {end['bare_mse']:.4f} (LLLite at step 0: {start['student_mse']:.4f})")


def test_saved_file_is_an_ordinary_lllite(run):
    path = run["result"].final_path
    net = read_lllite(str(path))
    assert len(net.paths) == 7 * 4  # SD1.5 layout: 7 transformer blocks x 4 Linears
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["lllite_kit_distilled_from"] == "tiny_cn.safetensors"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/control-net-lllite"
