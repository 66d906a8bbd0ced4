"""run_in_chunks on the CPU: large pictures go one per pass, small ones together, and every
chunk reaches the network in plain (N, C, H, W) memory order, whatever layout the caller's
batch has (ComfyUI's IMAGE moved to channels-first is channels-last in memory)."""
import torch

from lllite_kit.preprocessors import models


def _run(images: torch.Tensor, net: torch.nn.Module) -> tuple[torch.Tensor, list[tuple[int, bool]]]:
    """net over the batch through run_in_chunks; also (chunk size, contiguous) per pass."""
    import comfy.model_management as mm
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"),
                                               offload_device=mm.unet_offload_device())
    seen = []

    def detect(module, chunk):
        seen.append((chunk.shape[0], chunk.is_contiguous()))
        return module(chunk)

    return models.run_in_chunks(patcher, images, detect), seen


def test_cpu_chunks_follow_the_pixel_budget_and_are_contiguous():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    side = int(models.CPU_CHUNK_PIXELS ** 0.5)
    large = torch.rand(3, side, side, 3).movedim(-1, 1)  # an IMAGE batch as the nodes pass it
    assert not large.is_contiguous()
    out, seen = _run(large, net)
    assert seen == [(1, True)] * 3
    small = torch.rand(6, side // 4, side // 4, 3).movedim(-1, 1)
    out_small, seen_small = _run(small, net)
    assert seen_small == [(models.CHUNK, True), (6 - models.CHUNK, True)]
    # the same maps as one pass over the whole batch, up to float error
    with torch.no_grad():
        torch.testing.assert_close(out, net(large.contiguous()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_small, net(small.contiguous()), atol=1e-5, rtol=1e-5)
