"""3 x 3 convolutions by Winograd's minimal filtering F(4 x 4, 3 x 3) (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015), for float32 CPU inference.

Each 4 x 4 block of output comes from a 6 x 6 tile of input with 36 multiplications per
input/output channel pair instead of 144: the input tiles and the filters are transformed
(the filters once), the 36 transformed positions become 36 matrix products (torch.bmm, MKL),
and the products are transformed back. onnxruntime's CPU convolutions are direct, as are
oneDNN's on AVX2; this is how the torch graph of DWPose's detector gets ahead of them (YOLOX-L
spends most of its time in 3 x 3 convolutions of 128 to 512 channels).

The algorithm is exact; only the rounding differs from a direct convolution's: measured
5e-6 to 8e-6 of the output's range against float64, where oneDNN's direct convolution gives
1e-6 to 2e-6. The transformed filters take four times the convolution's weight memory,
built on the first call that uses them."""
import torch
import torch.nn.functional as F
from torch import nn

_M, _A = 4, 6  # output block, input tile
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def _two_d(rows: list) -> torch.Tensor:
    """A 1-D transform applied along both axes of a flattened tile: kron(T, T), float64."""
    t = torch.tensor(rows, dtype=torch.float64)
    return torch.kron(t, t)


_INPUT = _two_d(_BT).float()   # (36, 36): small integers, exact in float32
_OUTPUT = _two_d(_AT).float()  # (16, 36)

# Below this much work (tiles x input channels) the 36 products are too small for the GEMM to
# pay for the transforms. Measured against oneDNN's packed direct convolution, two AVX2
# threads: 512 channels on 9 x 12 (9 tiles: 4608) 4.3 ms against 2.8; 128 on 20 x 26 (35
# tiles: 4480) 0.89 against 0.84; 256 on 18 x 24 (30 tiles: 7680) 2.4 against 2.8; 128 on
# 36 x 48 2.7 against 2.8; 256 on 80 x 80 21-26 against 40; 512 on 20 x 20 6.8 against 12.4.
# A whole RTMPose-L crop: 231 ms with this threshold against 242 with 8192 (one thread), 130
# against 133 (two); 4000 or 2000 were no better on one thread and worse on two.
MIN_WORK = 6000
# With fewer channels the tile transforms outweigh the products (64 channels on 160 x 160:
# 11-12.5 ms against 10).
MIN_CHANNELS = 128

_ACTIVATIONS = {  # oneDNN post-op name -> the same activation, in place
    "none": lambda y, s: y,
    "relu": lambda y, s: y.relu_(),
    "leaky_relu": lambda y, s: F.leaky_relu_(y, s[0]),
    "swish": lambda y, s: F.silu(y, inplace=True),
}


def winograd_fits(conv: nn.Conv2d) -> bool:
    """A 3 x 3, stride 1, padding 1, undilated, ungrouped convolution with enough channels."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS)


class WinogradConv2d(nn.Module):
    """conv (see winograd_fits) then the activation attr names (oneDNN's post-op names), by
    F(4 x 4, 3 x 3) where the input has work enough (MIN_WORK), else by `direct` (a module
    computing the same, e.g. a packed oneDNN convolution). Inference only."""

    def __init__(self, conv: nn.Conv2d, attr: str, scalars: list, direct: nn.Module):
        super().__init__()
        self.conv, self.attr, self.scalars, self.direct = conv, attr, scalars, direct
        self.transformed = None  # (36, in, out) filters, built on first use

    def _filters(self) -> torch.Tensor:
        if self.transformed is None:
            w = self.conv.weight.detach().double()  # (out, in, 3, 3) -> (9, in * out)
            g = _two_d(_G) @ w.permute(2, 3, 1, 0).reshape(9, -1)
            self.transformed = g.reshape(_A * _A, w.shape[1], w.shape[0]).float().contiguous()
        return self.transformed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        th, tw = -(-h // _M), -(-w // _M)
        if n * th * tw * c < MIN_WORK:
            return self.direct(x)
        # Channels last, padded by the convolution's 1 and out to whole tiles.
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1 + _M * tw - w, 1, 1 + _M * th - h)).contiguous()
        s = xp.stride()
        tiles = xp.as_strided((_A, _A, n, th, tw, c), (s[1], s[2], s[0], _M * s[1], _M * s[2], 1))
        v = (_INPUT @ tiles.reshape(_A * _A, -1)).view(_A * _A, n * th * tw, c)
        m = torch.bmm(v, self._filters())  # (36, tiles, out)
        out_c = m.shape[2]
        y = (_OUTPUT @ m.view(_A * _A, -1)).view(_M, _M, n, th, tw, out_c).permute(2, 3, 0, 4, 1, 5)
        out = x.new_empty(n, th, _M, tw, _M, out_c)
        if self.conv.bias is None:
            out.copy_(y)
        else:
            torch.add(y, self.conv.bias.detach(), out=out)
        out = out.view(n, _M * th, _M * tw, out_c)[:, :h, :w].permute(0, 3, 1, 2)
        return _ACTIVATIONS[self.attr](out, self.scalars)
