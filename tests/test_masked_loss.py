"""Masked loss (sd-scripts' --masked_loss / alpha_mask): masks from the alpha channel, a
mask_dir or (without guided training) conditioning_data_dir, cropped and flipped like their
image, area-downsampled to the latent size, and the per-pixel loss multiplied by them before
the mean, as sd-scripts' apply_masked_loss does; the LoRA, LLLite and ControlNet trainers all
train on a loss of exactly 0 under black masks."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from training_data_helpers import CountingEncoder, write_image

from lllite_kit.training.config import apply_dataset_options, config_from_dict
from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData, items_from_tensors, load_dataset_toml
from lllite_kit.training.losses import per_sample_loss


def _half_mask(h: int, w: int) -> np.ndarray:
    """uint8 (h, w): 255 on the left half, 0 on the right."""
    m = np.zeros((h, w), np.uint8)
    m[:, : w // 2] = 255
    return m


def _data(subsets, **kw):
    return TrainingData([DatasetConfig(subsets=subsets, resolution=(32, 32))], encode_latents=CountingEncoder(), vae_id="t",
                        seed=0, **kw)


LEFT = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4).reshape(1, 4, 4)  # the half mask of a 32x32 image at latent size


# ----- the loss -----

@pytest.mark.parametrize("loss_type", ["l2", "l1", "huber"])
def test_a_mask_of_ones_is_no_mask(loss_type):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    c = torch.tensor([0.1, 0.3])
    plain = per_sample_loss(pred, target, loss_type, c)
    masked = per_sample_loss(pred, target, loss_type, c, torch.ones(2, 1, 64, 64))
    assert torch.equal(plain, masked)


def test_a_half_mask_gives_the_loss_of_that_half_and_no_gradient_outside_it():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 64, 64)  # pixel size: 8x the latent
    mask[:, :, :, :32] = 1.0
    loss = per_sample_loss(pred, target, "l2", mask=mask)
    # by hand: squared errors of the left 4 latent columns, divided by ALL elements (sd-scripts
    # does not renormalise by the mask's area)
    by_hand = ((pred.detach() - target)[:, :, :, :4] ** 2).sum(dim=(1, 2, 3)) / (4 * 8 * 8)
    assert torch.allclose(loss, by_hand, rtol=1e-6)
    loss.sum().backward()
    assert torch.count_nonzero(pred.grad[:, :, :, 4:]) == 0
    assert torch.count_nonzero(pred.grad[:, :, :, :4]) == 2 * 4 * 8 * 4


def test_a_soft_mask_is_area_averaged_to_the_latent_size():
    pred, target = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)  # l2 error 1 everywhere
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, :8, :8] = 1.0       # latent (0, 0): fully in
    mask[:, :, :8, 8:12] = 1.0     # latent (0, 1): half in
    assert per_sample_loss(pred, target, "l2", mask=mask).item() == pytest.approx((1.0 + 0.5) / 4)


# ----- reading masks -----

def test_alpha_channel_masks_are_cropped_flipped_and_downsampled(tmp_path):
    (tmp_path / "img").mkdir()
    rgba = np.dstack([np.full((32, 32, 3), 128, np.uint8), _half_mask(32, 32)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png", 32, 32)  # RGB: no alpha, so all ones (sd-scripts)
    data = _data([SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", alpha_mask=True, flip_aug=True)])
    got = {tuple(m.flatten().tolist()) for e in range(8) for i in range(len(data)) for m in data.batch_at(e, i).masks}
    assert got == {tuple(LEFT.flatten().tolist()), tuple(LEFT.flip(-1).flatten().tolist()), (1.0,) * 16}


def test_mask_dir_masks_pair_by_basename_and_come_with_guides(tmp_path):
    write_image(tmp_path / "img" / "a.png", 32, 32)
    write_image(tmp_path / "cond" / "a.png", 32, 32)
    (tmp_path / "masks").mkdir()
    Image.fromarray(_half_mask(32, 32), "L").save(tmp_path / "masks" / "a.webp", lossless=True)
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", conditioning_data_dir=tmp_path / "cond",
                          mask_dir=tmp_path / "masks")
    batch = _data([subset], require_guides=True, masked_loss=True).batch_at(0, 0)
    assert batch.guides is not None and batch.guides.shape == (1, 3, 32, 32)
    assert torch.equal(batch.masks, LEFT.unsqueeze(0))


def test_masked_loss_without_guided_training_reads_conditioning_data_dir_as_masks(tmp_path):
    write_image(tmp_path / "img" / "a.png", 32, 32)
    rgb = np.repeat(_half_mask(32, 32)[:, :, None], 3, axis=2)
    rgb[:, :, 1:] = 77  # sd-scripts uses the red channel
    (tmp_path / "cond").mkdir()
    Image.fromarray(rgb).save(tmp_path / "cond" / "a.png")
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", conditioning_data_dir=tmp_path / "cond")
    masked = _data([subset], masked_loss=True).batch_at(0, 0)
    assert masked.guides is None and torch.equal(masked.masks, LEFT.unsqueeze(0))
    plain = _data([subset]).batch_at(0, 0)  # without masked_loss they are guides, and there is no mask
    assert plain.masks is None and plain.guides is not None


def test_in_graph_masks_and_toml_keys(tmp_path):
    items = items_from_tensors(torch.rand(1, 3, 32, 32), "x", masks=torch.from_numpy(_half_mask(32, 32) / 255.0).float()[None])
    assert torch.equal(_data([SubsetConfig(items=items)]).batch_at(0, 0).masks, LEFT.unsqueeze(0))
    write_image(tmp_path / "img" / "a.png", 32, 32)
    (tmp_path / "m").mkdir()
    Image.fromarray(_half_mask(32, 32)).save(tmp_path / "m" / "a.png")
    toml = tmp_path / "d.toml"
    toml.write_text('[general]\nalpha_mask = true\n[[datasets]]\nresolution = 32\n'
                    '[[datasets.subsets]]\nimage_dir = "img"\nclass_tokens = "x"\n'
                    '[[datasets.subsets]]\nimage_dir = "img"\nclass_tokens = "x"\nalpha_mask = false\nmask_dir = "m"\n')
    a, b = load_dataset_toml(toml)[0].subsets
    assert (a.alpha_mask, a.mask_dir, b.alpha_mask, b.mask_dir) == (True, None, False, tmp_path / "m")
    both = toml.read_text().replace("alpha_mask = false\n", "")
    toml.write_text(both)
    with pytest.raises(DatasetError, match="one loss-mask source"):
        load_dataset_toml(toml)
    cfg = config_from_dict({"masked_loss": True, "alpha_mask": True})
    assert cfg.masked_loss and cfg.alpha_mask
    # a training node's extra_options: alpha_mask goes to the dataset, masked_loss to the config
    rest, (ds,) = apply_dataset_options([DatasetConfig(subsets=[SubsetConfig(items=items)])],
                                        {"masked_loss": True, "alpha_mask": True}, "node")
    assert rest == {"masked_loss": True} and ds.subsets[0].alpha_mask


def test_mask_problems_are_listed_in_the_one_error(tmp_path):
    for n in ("a", "b", "c"):
        write_image(tmp_path / "img" / f"{n}.png", 32, 32)
    write_image(tmp_path / "masks" / "a.png", 16, 16)                   # other size
    (tmp_path / "masks" / "b.png").write_bytes(b"not an image at all")   # unreadable; c has none
    write_image(tmp_path / "other" / "z.png", 32, 32)
    broken = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", mask_dir=tmp_path / "masks")
    unmasked = SubsetConfig(image_dir=tmp_path / "other", class_tokens="y")
    with pytest.raises(DatasetError) as e:
        _data([broken, unmasked], masked_loss=True)
    msg = str(e.value)
    assert msg.startswith("4 dataset problems in 4 groups: Images without a mask image (1); Mask images must have the same pixel "
                          "size as their image (1); Cannot read these mask images (1); Subsets without loss masks (1).")
    assert "\n  - img/c.png\n" in msg
    assert "\n  - masks/b.png (not an image format PIL can read)\n" in msg
    assert "\n  - img/a.png (32x32, its mask masks/a.png is 16x16)\n" in msg
    assert msg.endswith("\n  - other")


# ----- the engine -----

@pytest.fixture(scope="module")
def sd15(tiny):
    from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
    from training_helpers import ListData, unit_group_norms

    with torch.inference_mode():
        model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
        unit_group_norms(model)
    with torch.inference_mode(False):
        with trainable_model(model) as tm:
            text = TextConditioner(clip, tm.family)
            text.precompute(ListData(2).captions)
            yield tm, text


class _Masked:
    """training_helpers.ListData with one mask for every batch."""

    def __init__(self, data, mask):
        self.data, self.mask = data, mask

    def __len__(self):
        return len(self.data)

    def batches(self, epoch, start=0):
        for b in self.data.batches(epoch, start):
            yield b if self.mask is None else dataclasses.replace(b, masks=self.mask.expand(len(b.captions), -1, -1, -1))


def _one_step(tm, text, out, mask):
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.engine import TrainingEngine
    from training_helpers import ListData, TinyAdapter, no_metadata

    adapter = TinyAdapter(dropout=0.0)
    cfg = TrainConfig(learning_rate=1e-2, max_train_steps=1, output_name="t", save_state=False)
    result = TrainingEngine(cfg, tm, text, adapter, _Masked(ListData(n=2, bs=2), mask), out, no_metadata).run()
    return result.losses[0], {k: v.detach().clone() for k, v in adapter.params.items()}


def test_engine_mask_of_ones_equals_no_mask_and_half_mask_is_the_hand_loss(sd15, tmp_path, monkeypatch):
    tm, text = sd15
    plain_loss, plain_weights = _one_step(tm, text, tmp_path / "a", None)
    ones_loss, ones_weights = _one_step(tm, text, tmp_path / "b", torch.ones(1, 1, 8, 8))
    assert ones_loss == plain_loss
    assert all(torch.equal(plain_weights[k], ones_weights[k]) for k in plain_weights)

    seen = {}
    predict, target = tm.predict, tm.schedule.target
    monkeypatch.setattr(tm, "predict", lambda *a, **k: seen.setdefault("pred", predict(*a, **k)))
    monkeypatch.setattr(tm.schedule, "target", lambda *a, **k: seen.setdefault("target", target(*a, **k)))
    half = torch.zeros(1, 1, 8, 8)
    half[..., :4] = 1.0
    half_loss, half_weights = _one_step(tm, text, tmp_path / "c", half)
    err = (seen["pred"].detach().float() - seen["target"].float()) ** 2
    assert half_loss == pytest.approx((err[..., :4].sum() / err[0].numel() / err.shape[0]).item(), rel=1e-5)
    assert any(not torch.equal(half_weights[k], plain_weights[k]) for k in plain_weights)  # the mask did steer the step


# ----- the training node -----

def _lora_graph(extra_options: str, conditioning_dir: str = "") -> dict:
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "2": {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
            "train_dir": "masked/train", "reg_dir": "", "caption_extension": ".txt", "resolution": 64, "batch_size": 2,
            "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0,
            "caption_dropout_rate": 0.0, "conditioning_dir": conditioning_dir}},
        "3": {"class_type": "LLLiteKit_TrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], "output_name": "masked_lora",
            "max_train_steps": 1, "learning_rate": 1e-3, "network_dim": 4, "network_alpha": 4.0, "conv_dim": 0,
            "train_text_encoder": False, "text_encoder_lr": 5e-5, "optimizer_type": "AdamW", "optimizer_args": "",
            "lr_scheduler": "constant", "lr_warmup_steps": 0, "mixed_precision": "no", "gradient_checkpointing": False,
            "gradient_accumulation_steps": 1, "seed": 1, "noise_offset": 0.0, "min_snr_gamma": 0.0, "loss_type": "l2",
            "save_every_n_steps": 0, "save_precision": "float", "sample_prompts": "", "sample_every_n_steps": 0,
            "sample_sampler": "euler", "if_exists": "overwrite", "extra_options": extra_options}},
    }


def test_train_lora_node_masks_from_alpha_or_conditioning_dir_and_refuses_masked_loss_without_masks(graph, comfy_dirs):
    """Black masks leave nothing to learn: the step's loss is exactly 0 and the LoRA's up
    weights (zero at the start) get no gradient. Without masks, masked_loss is refused."""
    import safetensors.torch
    from graph_runner import GraphError

    root = comfy_dirs / "input" / "masked"
    for name, seed in (("a", 1), ("b", 2)):
        rgb = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (root / "train" / "1_ring").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([rgb, np.zeros((64, 64), np.uint8)]), "RGBA").save(root / "train" / "1_ring" / f"{name}.png")
        (root / "cond" / "1_ring").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), "black").save(root / "cond" / "1_ring" / f"{name}.png")

    def losses():
        texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "3"]
        return [float(t.split()[-1]) for t in texts if t.startswith("step ")]

    for extra, cond in (("alpha_mask = true", ""), ("masked_loss = true", "masked/cond")):
        graph.server.messages.clear()
        graph.run(_lora_graph(extra, cond))
        assert losses() == [0.0]
        weights = safetensors.torch.load_file(comfy_dirs / "models" / "loras" / "masked_lora.safetensors")
        ups = [v for k, v in weights.items() if k.endswith("lora_up.weight")]
        assert ups and all(torch.count_nonzero(v) == 0 for v in ups)

    graph.server.messages.clear()
    graph.run(_lora_graph(""))  # the same images unmasked: a real loss
    assert losses()[0] > 0
    with pytest.raises(GraphError, match="Subsets without loss masks"):
        graph.run(_lora_graph("masked_loss = true"))


def test_train_lllite_node_with_black_alpha_masks_trains_on_a_loss_of_0(graph, comfy_dirs):
    """The LLLite trainer reads masks through the same data path and engine as LoRA."""
    from test_lllite_training_graph import TRAIN

    root = comfy_dirs / "input" / "masked_lllite"
    for name, seed in (("a", 1), ("b", 2)):
        rgb = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (root / "train" / "1_ring").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([rgb, np.zeros((64, 64), np.uint8)]), "RGBA").save(root / "train" / "1_ring" / f"{name}.png")
        (root / "cond" / "1_ring").mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - rgb).save(root / "cond" / "1_ring" / f"{name}.png")
    prompt = _lora_graph("", "masked_lllite/cond")
    prompt["2"]["inputs"]["train_dir"] = "masked_lllite/train"
    prompt["3"] = {"class_type": "LLLiteKit_TrainLLLite", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0],
        **TRAIN, "output_name": "masked_lllite", "max_train_steps": 1, "heldout_images": 0, "save_every_n_steps": 0,
        "extra_options": "alpha_mask = true"}}
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}}
    graph.server.messages.clear()
    graph.run(prompt)
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "3"]
    assert [float(t.split()[-1]) for t in texts if t.startswith("step ")] == [0.0]


def test_controlnet_training_with_black_masks_trains_on_a_loss_of_0(tiny, tmp_path):
    """ControlNet too: the same TrainingData masks through the same engine loss."""
    from controlnet_testing import build_model
    from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.controlnet.adapter import ControlNetAdapter
    from lllite_kit.training.engine import TrainingEngine
    from test_lllite_training import fill_task, pooled_latents
    from training_helpers import no_metadata

    images, guides = fill_task(2)
    losses = []
    for mask_value in (0.0, 1.0):
        items = items_from_tensors(images, "a filled circle", guides, masks=torch.full((2, 64, 64), mask_value))
        data = TrainingData([DatasetConfig(subsets=[SubsetConfig(items=items)], resolution=(64, 64), batch_size=2)],
                            encode_latents=pooled_latents, vae_id="avg-pool-8", seed=0, size_multiple=64,
                            require_guides=True, masked_loss=True)
        model, clip = build_model("sd15", seed=0), tiny.build_clip("sd15", seed=0)
        cfg = TrainConfig(max_train_steps=1, learning_rate=1e-3, seed=0, output_name="masked_cn", save_state=False,
                          save_precision="float", masked_loss=True)
        with torch.inference_mode(False):
            text = TextConditioner(clip, "sd15")
            text.precompute(data.fixed_captions())
            with trainable_model(model) as tm:
                adapter = ControlNetAdapter(model.model.model_config.unet_config, "sd15")
                result = TrainingEngine(cfg, tm, text, adapter, data, tmp_path / str(mask_value), no_metadata).run()
        losses.append(result.losses[0])
    assert losses[0] == 0.0 and losses[1] > 0  # black masks: nothing to learn; white: the plain loss
