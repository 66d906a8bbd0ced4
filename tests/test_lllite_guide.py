"""Fitting the guide image to the generated picture's size."""
import pytest
import torch

from lllite_kit.lllite.guide import fit_guide


def _bars(h, w):
    """A white frame one pixel wide on black, so crops and pads are visible at the borders."""
    x = torch.zeros(1, 3, h, w)
    x[..., 0, :] = x[..., -1, :] = 1.0
    x[..., :, 0] = x[..., :, -1] = 1.0
    return x


def test_same_size_is_untouched_and_channels_become_rgb():
    x = torch.rand(2, 4, 40, 24)
    assert torch.equal(fit_guide(x, 40, 24, "crop"), x[:, :3])
    grey = torch.rand(1, 1, 40, 24)
    assert torch.equal(fit_guide(grey, 40, 24, "pad"), grey.expand(-1, 3, -1, -1))


def test_stretch_crop_and_pad():
    wide = _bars(32, 64)  # 2:1 guide onto a 1:1 picture
    stretched = fit_guide(wide, 32, 32, "stretch")
    assert stretched.shape == (1, 3, 32, 32) and stretched[0, 0, :, 0].min() > 0.3  # frame kept on the left
    cropped = fit_guide(wide, 32, 32, "crop")
    assert cropped.shape == (1, 3, 32, 32)
    assert cropped[0, 0, 16, :].max() == 0 and cropped[0, 0, 0, 16] == 1  # left/right cut off, top kept
    padded = fit_guide(wide, 32, 32, "pad")
    assert padded.shape == (1, 3, 32, 32)
    assert padded[0, :, :8].max() == 0 and padded[0, :, 24:].max() == 0  # black bands above and below
    assert padded[0, 0, 8, 16] > 0.3 and padded[0, 0, 23, 16] > 0.3  # the scaled (blurred) frame in between


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="resize mode must be one of"):
        fit_guide(torch.zeros(1, 3, 8, 8), 16, 16, "zoom")
