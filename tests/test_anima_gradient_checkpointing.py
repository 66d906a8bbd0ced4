"""Gradient checkpointing of the Anima DiT (every cosmos predict2 Block recomputed in backward):
the trained weights get the gradients they get without it, for an inpainting LLLite (random
mask drawn once per DiT call, not again in the recomputation) and a LoRA; the blocks are plain
again afterwards."""
import pytest
import torch

from anima_testing import context
from lllite_kit.training.anima.lllite_adapter import AnimaLLLiteAdapter
from lllite_kit.training.anima.model import DIT_BLOCKS, trainable_anima
from lllite_kit.training.comfy_bridge.model import _CheckpointedForward
from lllite_kit.training.data.batch import Batch
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig


def _wrapped(dm) -> int:
    return sum(isinstance(m.__dict__.get("forward"), _CheckpointedForward) for m in dm.modules() if isinstance(m, DIT_BLOCKS))


def _adapter(kind, model):
    if kind == "lora":
        adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=4.0, train_text_encoder=False), model.model.model_config)
    else:
        adapter = AnimaLLLiteAdapter(cond_emb_dim=8, network_dim=8, cond_dim=8, inpainting=True, seed=3)
    return adapter


def _gradients(model, kind, checkpointing):
    g = torch.Generator().manual_seed(0)
    x, guide = torch.randn(2, 16, 1, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    with torch.inference_mode(False), trainable_anima(model, gradient_checkpointing=checkpointing) as tm:
        dm = tm.diffusion_model
        adapter = _adapter(kind, model)
        adapter.attach(dm, {})
        try:
            assert _wrapped(dm) == (len(dm.blocks) if checkpointing else 0)
            params = [p for group in adapter.param_groups(1.0, None) for p in group["params"]]
            with torch.no_grad():
                for i, p in enumerate(params):  # every weight non-zero, the same in both runs
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.2)
            adapter.train(True)
            if kind == "lllite":  # random masks as the fourth channel, drawn from the adapter's generator
                adapter.set_batch(Batch(latents=x[:, :, 0], captions=["a", "b"], original_sizes=[(64, 64)] * 2,
                                        crop_top_left=[(0, 0)] * 2, target_sizes=[(64, 64)] * 2, guides=guide))
            out = dm(x, torch.tensor([0.3, 0.8]), context(3, batch=2))
            out.square().mean().backward()
            grads = [p.grad.clone() for p in params]
        finally:
            adapter.detach()
    return grads, _wrapped(dm)


@pytest.mark.parametrize("kind", ["lllite", "lora"])
def test_gradients_are_the_same_with_checkpointing(kind):
    import tiny_anima

    model = tiny_anima.build_anima(0)
    plain, _ = _gradients(model, kind, False)
    checkpointed, after = _gradients(model, kind, True)
    assert after == 0
    assert len(plain) > 10 and all(g.abs().max() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7 * a.abs().max().item()), (a - b).abs().max()
