"""LoRA modules on single layers: the math, train-only dropout, DyLoRA, and clean detach."""
import pytest
import torch
import torch.nn.functional as F

from lllite_kit.training.lora.network import LoRAModule
from lora_helpers import attached


def _module(layer, rank=4, alpha=2.0, **kw):
    m = LoRAModule("lora_unet_x", layer, rank, alpha, generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        for p in m.up_chunks:
            p.normal_()
    m.attach(layer)
    return m


def test_linear_and_3x3_conv_add_scaled_up_down():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    m = _module(linear, rank=3, alpha=1.5)
    m.train(False)
    x = torch.randn(2, 7, 6)
    expected = F.linear(x, linear.weight + 0.5 * m.up_weight @ m.down_weight, linear.bias)
    torch.testing.assert_close(linear(x), expected)

    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    m = _module(conv, rank=2, alpha=1.0)
    m.train(False)
    assert tuple(m.down_weight.shape) == (2, 4, 3, 3) and tuple(m.up_weight.shape) == (6, 2, 1, 1)
    x = torch.randn(1, 4, 9, 9)
    # the merged weight ComfyUI computes when it loads the file
    merged = conv.weight + 0.5 * (m.up_weight.flatten(1) @ m.down_weight.flatten(1)).reshape(conv.weight.shape)
    torch.testing.assert_close(conv(x), F.conv2d(x, merged, conv.bias, stride=2, padding=1))


def test_up_starts_at_zero_and_seeded_down():
    layer = torch.nn.Linear(8, 8)
    a = LoRAModule("a", layer, 4, 1.0, generator=torch.Generator().manual_seed(3))
    b = LoRAModule("a", layer, 4, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.count_nonzero(a.up_weight) == 0
    assert torch.equal(a.down_weight, b.down_weight) and a.down_weight.abs().max() <= 1 / 8 ** 0.5


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    m = _module(layer, dropout=0.5)
    x = torch.randn(4, 16)
    m.train(False)
    assert torch.equal(layer(x), layer(x))
    m.train(True)
    assert not torch.equal(layer(x), layer(x))


def test_rank_dropout_drops_whole_ranks_and_rescales():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    m = _module(layer, rank=1, alpha=1.0, rank_dropout=0.5)
    x = torch.randn(64, 8)
    base = F.linear(x, layer.weight, layer.bias)
    m.train(False)
    delta = layer(x) - base
    m.train(True)
    train_delta = layer(x) - base
    kept = train_delta.abs().sum(1) > 0
    assert 0 < kept.sum() < 64  # some samples dropped, some kept
    torch.testing.assert_close(train_delta[kept], 2 * delta[kept])  # 1 / (1 - 0.5)


def test_module_dropout_skips_the_whole_module_in_train_mode():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    m = _module(layer, module_dropout=0.5)
    x = torch.randn(2, 8)
    base = F.linear(x, layer.weight, layer.bias)
    m.train(False)
    with_lora = layer(x)
    m.train(True)
    outs = [layer(x) for _ in range(40)]
    skipped = sum(torch.equal(o, base) for o in outs)
    assert 0 < skipped < 40 and all(torch.equal(o, base) or torch.allclose(o, with_lora) for o in outs)


def test_dylora_trains_one_unit_at_a_time_and_keeps_full_rank():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 6)
    m = _module(layer, rank=6, alpha=3.0, unit=2)
    assert tuple(m.down_weight.shape) == (6, 8) and len(m.down_chunks) == 3
    x = torch.randn(3, 8)
    base = F.linear(x, layer.weight, layer.bias)
    trained = set()
    for _ in range(12):
        for p in m.parameters():
            p.grad = None
        m.train(True)
        out = layer(x)
        out.sum().backward()
        with_grad = [i for i, p in enumerate(m.down_chunks) if p.grad is not None]
        assert len(with_grad) == 1 and [i for i, p in enumerate(m.up_chunks) if p.grad is not None] == with_grad
        r = 2 * (with_grad[0] + 1)  # ranks in use: all chunks up to the trained one, scale alpha / r
        expected = base + F.linear(F.linear(x, m.down_weight[:r]), m.up_weight[:, :r]) * 3.0 / r
        torch.testing.assert_close(out, expected)
        trained.add(with_grad[0])
    assert trained == {0, 1, 2}
    m.train(False)
    torch.testing.assert_close(layer(x), base + F.linear(F.linear(x, m.down_weight), m.up_weight) * 0.5)


def test_bad_rank_is_an_error():
    with pytest.raises(ValueError, match="multiple of unit"):
        LoRAModule("lora_unet_x", torch.nn.Linear(4, 4), 6, 1.0, unit=4)


def test_detach_removes_every_hook_and_leaves_weights(tiny):
    model, clip, adapter = attached(tiny, "sd15", conv_dim=2)
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    hooked = [m for m in list(model.model.diffusion_model.modules()) + list(clip.cond_stage_model.modules()) if m._forward_hooks]
    assert len(hooked) == len(adapter.modules)
    adapter.detach()
    assert not any(m._forward_hooks for m in list(model.model.diffusion_model.modules()) + list(clip.cond_stage_model.modules()))
    after = model.model.diffusion_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
