"""Controllability during training (issue 18 item 2): at each held-out evaluation the trainer
samples held-out guides with the model as it trains and scores the pictures against them,
beside the control gap, in the progress text and on the loss-curve chart.

Library: the LLLite fill task of test_lllite_training on the engine, pictures decoded as that
task's "VAE" encodes (8x8 average pool, undone by nearest upsampling). Graph: the Train
ControlNet-LLLite node with the form's controllability options, the tiny checkpoint's VAE."""
import pytest
import torch
import torch.nn.functional as F

import workflow_fixtures
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.control_gap import ControlGap, draw_training_curves, gap_text
from lllite_kit.training.controllability.check import CheckOptions, ControllabilityCheck, combined
from lllite_kit.training.controllability.maps import MapSettings, result_maps
from lllite_kit.training.controllability.measure import measure
from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.engine import TrainHooks, TrainingEngine
from lllite_kit.training.lllite_adapter import LLLiteAdapter
from lllite_kit.training.lora import training_metadata
from lllite_kit.training.session import data_facts
from test_lllite_training import fill_task, pooled_latents
from test_lllite_training_graph import _folder_graph

STEPS, EVERY = 3, 2


def pooled_decoder(latent_format):
    """Sampled latents -> pictures in 0..1, the inverse of pooled_latents up to the pooling."""
    return lambda z: F.interpolate(latent_format.process_in(z)[:, :3], scale_factor=8, mode="nearest") * 0.5 + 0.5


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    images, guides = fill_task(6)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a filled circle", guides))],
                            resolution=(64, 64), batch_size=2)
    data = TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=0, size_multiple=32,
                        require_guides=True, holdout=2)
    model, clip = tiny.build_model("sdxl", seed=0), tiny.build_clip("sdxl", seed=0)
    cfg = TrainConfig(max_train_steps=STEPS, learning_rate=3e-2, seed=0, v_parameterization=True, min_timestep=500,
                      validate_every_n_steps=EVERY, save_precision="float", output_name="checked")
    texts = []
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sdxl")
        text.precompute(data.fixed_captions())
        with trainable_model(model, v_parameterization=True) as tm:
            adapter = LLLiteAdapter("sdxl", 8, 16, name="checked")
            hooks = TrainHooks(evaluated=lambda step, r: texts.append((step, gap_text(r))))
            engine = TrainingEngine(cfg, tm, text, adapter, data, tmp_path_factory.mktemp("checked"), training_metadata,
                                    {**data_facts(data)[0], "sd_model_name": "tiny"}, hooks=hooks)
            holdout = data.holdout_batches()
            check = ControllabilityCheck(tm, text, adapter, holdout, CheckOptions("canny", images=2, sample_steps=2,
                                                                                  tolerance=2.0, edge_threshold=0.05),
                                         pooled_decoder(model.model.latent_format), seed=7)
            hooks.evaluate = combined(ControlGap(tm, text, adapter, holdout, (500, 1000)), check)
            result = engine.run()
            yield {"result": result, "texts": texts, "check": check, "adapter": adapter, "holdout": holdout, "tm": tm}


def test_measured_at_the_evaluation_steps_beside_the_control_gap(run):
    evaluations = run["result"].evaluations
    assert [s for s, _ in evaluations] == [0, EVERY, STEPS]  # start, every EVERY steps, end
    for _, r in evaluations:
        assert {"control_gap", "controllability", "controllability_f1", "controllability_precision",
                "controllability_recall", "controllability_ssim", "controllability_chance"} <= set(r)
        assert r["controllability"] == r["controllability_f1"] and 0.0 <= r["controllability"] <= 1.0
    assert [s for s, _ in run["texts"]] == [0, EVERY, STEPS]
    for (_, text), (_, r) in zip(run["texts"], evaluations):
        assert "control gap" in text
        assert (f"controllability f1 {r['controllability']:.4g} (held-out samples; "
                f"chance {r['controllability_chance']:.4g})") in text


def test_score_is_the_measurement_of_fixed_seed_samples(run):
    """Measured again with the final weights, the score is the last evaluation's (fixed seeds),
    and it is Measure Controllability's F1 of the sampled pictures."""
    check, adapter, holdout = run["check"], run["adapter"], run["holdout"]
    adapter.attach(run["tm"].diffusion_model, {})  # the run detached it at its end
    adapter.train(False)
    try:
        with torch.inference_mode(False), torch.no_grad():
            score = check(STEPS)
            pictures = check.pictures()
    finally:
        adapter.detach()
    last = run["result"].evaluations[-1][1]
    assert score == pytest.approx({k: v for k, v in last.items() if k.startswith("controllability")}, abs=1e-9)
    guides = torch.cat([(batch.guides[row:row + 1] + 1) / 2 for batch, row in check.samples])
    maps = result_maps("canny", torch.cat(pictures), MapSettings())
    m = measure("edges", maps, guides, 2.0, 0.05)  # the node's measurement of the same two pictures
    assert score["controllability"] == pytest.approx(m.mean["f1"], abs=1e-6)
    assert score["controllability_chance"] == pytest.approx(m.chance, abs=1e-6)  # each against the other's guide


def test_chart_has_the_controllability_panel_under_the_gap(run):
    result = run["result"]
    curve = draw_training_curves(result.losses, result.evaluations)
    without = draw_training_curves(result.losses, [(s, {k: v for k, v in r.items() if not k.startswith("controllability")})
                                                   for s, r in result.evaluations])
    assert curve.shape == (1, 700, 640, 3) and without.shape == (1, 500, 640, 3)
    assert torch.equal(curve[:, :500], without)


def test_training_node_form_turns_it_on(graph, comfy_dirs, tiny):
    """The Train ControlNet-LLLite node with controllability_map canny: progress text and a
    three-panel loss curve; a learned map without its weight file is refused before training."""
    workflow_fixtures.prepare_lllite_train_folders(comfy_dirs / "models", comfy_dirs / "input", tiny)
    options = {"controllability_map": "canny", "controllability_images": 1, "controllability_sample_steps": 1,
               "validate_every_n_steps": 1, "save_every_n_steps": 0, "max_train_steps": 1, "output_name": "checked_node"}
    graph.run(_folder_graph("sdxl", "training/lllite_canny/canny", **options))
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "3"]
    assert sum("controllability f1" in t for t in texts) >= 2, texts  # step 0 and step 1
    assert graph.node_outputs("3")[2][0].shape[1] == 700
    from graph_runner import GraphError

    with pytest.raises(GraphError, match="controllability_weights"):
        graph.run(_folder_graph("sdxl", "training/lllite_canny/canny", **{**options, "controllability_map": "hed"}))


def test_other_trainers_refuse_the_option_by_name(tmp_path):
    """LoRA, Textual Inversion and full-model runs have no held-out guides to sample: the option
    is refused before any work, not ignored."""
    from lllite_kit.training.session import run_training

    with pytest.raises(ValueError, match="controllability_map = 'canny': .* LLLite, ControlNet and distillation"):
        run_training(TrainConfig(controllability_map="canny"), None, None, None, [], None, None, output_dir=tmp_path)
