"""What guided adapters share (training/adapter.py): a sample guide in place of the batch's,
a batch's guide images, and weights loaded only when they fit exactly."""
import pytest
import torch

from lllite_kit.training.adapter import GuidedAdapter, batch_guides, load_exact
from lllite_kit.training.data.batch import Batch


def _batch(n_latents: int, n_guides: int | None) -> Batch:
    sizes = [(64, 64)] * n_latents
    guides = None if n_guides is None else torch.zeros(n_guides, 3, 64, 64)
    return Batch(torch.zeros(n_latents, 4, 8, 8), ["x"] * n_latents, sizes, [(0, 0)] * n_latents, sizes, guides)


def test_batch_guides_one_per_latent():
    batch = _batch(2, 2)
    assert batch_guides(batch, "LLLite") is batch.guides
    with pytest.raises(ValueError, match=r"^LLLite training needs guide images in every batch \(conditioning_data_dir"):
        batch_guides(_batch(2, None), "LLLite")
    with pytest.raises(KeyError, match="the batch has 2 latents but 1 guide images"):
        batch_guides(_batch(2, 1), "ControlNet", "somewhere", KeyError)


def test_load_exact_copies_only_a_perfect_fit():
    net = torch.nn.Linear(3, 2)
    weights = {"weight": torch.ones(2, 3), "bias": torch.full((2,), 2.0)}
    load_exact(net.state_dict(), weights, "net")
    assert torch.equal(net.weight, weights["weight"]) and torch.equal(net.bias, weights["bias"])
    for bad, named in (({"weight": torch.zeros(2, 3)}, r"missing \['bias'\]"),
                       ({**weights, "extra": torch.zeros(1)}, r"unexpected \['extra'\]"),
                       ({**weights, "weight": torch.zeros(3, 2)}, r"other shapes \['weight'\]")):
        with pytest.raises(ValueError, match=r"^net does not fit: .*" + named):
            load_exact(net.state_dict(), bad, "net does not fit")
        assert torch.equal(net.weight, weights["weight"])  # nothing copied


def test_using_guide_gives_the_batch_guides_back_even_after_an_error():
    adapter, batch, sample = GuidedAdapter(), torch.zeros(2, 3, 8, 8), torch.ones(1, 3, 8, 8)
    adapter._guides = batch
    with pytest.raises(RuntimeError):
        with adapter.using_guide(sample):
            assert adapter._guides is sample
            raise RuntimeError("sampling failed")
    assert adapter._guides is batch
