"""LoRA modules added to a frozen Linear / Conv2d through a forward hook.

output = layer(x) + up(down(x)) * alpha / rank. down is Linear(in, r) or a conv with the
layer's kernel, stride and padding (LierLa: 1x1, C3Lier: 3x3); up is Linear(r, out) or a
1x1 conv. Weights are kept in kohya's layout (down (r, in[, kh, kw]), up (out, r[, 1, 1])) so
saving is a rename. The hook leaves the layer untouched, so removing it undoes everything.

DyLoRA keeps the rank in chunks of `unit`. Each training step samples a rank b (a multiple
of unit), runs the first b + unit components with scale alpha / (b + unit) - what a file cut
to that rank computes - and only the last chunk gets gradients. Eval runs the full rank.
Random draws use torch's global generator, so a seeded run repeats and gradient
checkpointing (which restores that generator) recomputes the same draws.
"""
import math

import torch
import torch.nn.functional as F


class LoRAModule(torch.nn.Module):
    def __init__(self, name: str, layer: torch.nn.Module, rank: int, alpha: float | None, *,
                 unit: int | None = None, dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if rank < 1:
            raise ValueError(f"{name}: rank must be at least 1, got {rank}")
        unit = unit or rank
        if rank % unit:
            raise ValueError(f"{name}: DyLoRA rank {rank} is not a multiple of unit {unit}")
        self.name = name
        self.rank = rank
        self.unit = unit
        self.dynamic = unit < rank
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.set_alpha(alpha)

        device = layer.weight.device
        if isinstance(layer, torch.nn.Conv2d):
            self.conv = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
            down_shape = (rank, layer.in_channels, *layer.kernel_size)
            up_shape = (layer.out_channels, rank, 1, 1)
        else:
            self.conv = None
            down_shape = (rank, layer.in_features)
            up_shape = (layer.out_features, rank)
        # kaiming_uniform_(a=sqrt(5)) as in microsoft/LoRA: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        # drawn from our own generator so the start does not depend on the global RNG.
        bound = 1.0 / math.sqrt(math.prod(down_shape[1:]))
        down = (torch.rand(down_shape, generator=generator) * 2 - 1) * bound
        self.down_chunks = torch.nn.ParameterList(torch.nn.Parameter(c.to(device, dtype).contiguous()) for c in down.split(unit, 0))
        self.up_chunks = torch.nn.ParameterList(
            torch.nn.Parameter(torch.zeros((up_shape[0], unit, *up_shape[2:]), device=device, dtype=dtype))
            for _ in range(rank // unit))
        self._handle = None

    def set_alpha(self, alpha: float | None) -> None:
        # alpha 0 or missing means "no scaling" (alpha = rank), as sd-scripts reads old files.
        self.alpha = float(self.rank if alpha is None or alpha == 0 else alpha)

    @property
    def down_weight(self) -> torch.Tensor:
        return torch.cat(tuple(self.down_chunks), 0)

    @property
    def up_weight(self) -> torch.Tensor:
        return torch.cat(tuple(self.up_chunks), 1)

    def set_weights(self, down: torch.Tensor, up: torch.Tensor) -> None:
        if tuple(down.shape) != tuple(self.down_weight.shape) or tuple(up.shape) != tuple(self.up_weight.shape):
            raise ValueError(f"{self.name}: weights of shape down {tuple(down.shape)} / up {tuple(up.shape)} do not fit "
                             f"down {tuple(self.down_weight.shape)} / up {tuple(self.up_weight.shape)}")
        with torch.no_grad():
            for p, c in zip(self.down_chunks, down.split(self.unit, 0)):
                p.copy_(c)
            for p, c in zip(self.up_chunks, up.split(self.unit, 1)):
                p.copy_(c)

    def attach(self, layer: torch.nn.Module) -> None:
        self._handle = layer.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, layer, args, output):
        if self.training and self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return output
        return output + self.delta(args[0]).to(output.dtype)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        if not (self.dynamic and self.training):
            if len(self.down_chunks) == 1:
                return self.down_chunks[0], self.up_chunks[0], self.alpha / self.rank
            return self.down_weight, self.up_weight, self.alpha / self.rank
        chunk = int(torch.randint(0, self.rank // self.unit, (1,)).item())
        down = [c.detach() for c in self.down_chunks[:chunk]] + [self.down_chunks[chunk]]
        up = [c.detach() for c in self.up_chunks[:chunk]] + [self.up_chunks[chunk]]
        return torch.cat(down, 0), torch.cat(up, 1), self.alpha / ((chunk + 1) * self.unit)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down, up, scale = self._weights()
        # Cast the small weights to the activations' dtype, not the large activations to the
        # weights' (autograd still updates the weights in their own dtype).
        down, up = down.to(x.dtype), up.to(x.dtype)
        lx = F.conv2d(x, down, **self.conv) if self.conv else F.linear(x, down)
        if self.training and self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        if self.training and self.rank_dropout:
            # one keep/drop per sample and rank component; rescale as if the rank had shrunk
            mask = torch.rand((lx.shape[0], down.shape[0]), device=lx.device) > self.rank_dropout
            if lx.ndim == 3:
                mask = mask.unsqueeze(1)
            elif lx.ndim == 4:
                mask = mask[:, :, None, None]
            lx = lx * mask
            scale = scale / (1.0 - self.rank_dropout)
        out = F.conv2d(lx, up) if self.conv else F.linear(lx, up)
        return out * scale
