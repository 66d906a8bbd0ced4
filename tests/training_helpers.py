"""Shared bits of the training-engine tests: a minimal adapter (proves the loop only needs the
TrainableAdapter interface), a minimal in-memory dataset, and a tiny prepared model."""
import json

import safetensors.torch
import torch
import torch.nn.functional as F

from lllite_kit.training.data.batch import Batch


def unit_group_norms(model) -> None:
    """Gain 1 on every GroupNorm of the U-Net, as in a trained model. The tiny models' seeded
    fill gives GroupNorms not named "norm" (in_layers.0, out.0 ...) a gain near 0.02, which
    shrinks the output to ~0.02 std: nothing upstream could then lower an eps loss."""
    with torch.no_grad():
        for m in model.model.diffusion_model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)


class TinyAdapter:
    """A low-rank residual on every attention output projection of the U-Net's middle block,
    with dropout (so resuming must restore the global RNG)."""

    kind = "test"
    trains_text_encoders = False

    def __init__(self, rank: int = 2, dropout: float = 0.1, seed: int = 0):
        self.rank, self.dropout, self.seed = rank, dropout, seed
        self.params: dict[str, torch.nn.Parameter] = {}
        self.handles = []
        self.training = True

    def attach(self, diffusion_model, text_encoders):
        g = torch.Generator().manual_seed(self.seed)
        layers = {n: m for n, m in diffusion_model.named_modules() if n.startswith("middle_block") and n.endswith("to_out.0")}
        assert layers, "tiny model has no middle-block attention"
        for name, layer in sorted(layers.items()):
            key = name.replace(".", "_")
            if key + ".down" not in self.params:
                self.params[key + ".down"] = torch.nn.Parameter(torch.randn(self.rank, layer.in_features, generator=g) * 0.1)
                self.params[key + ".up"] = torch.nn.Parameter(torch.zeros(layer.out_features, self.rank))
            self.handles.append(layer.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, args, output):
            h = F.linear(args[0].float(), self.params[key + ".down"])
            if self.training and self.dropout:
                h = F.dropout(h, self.dropout)
            return output + F.linear(h, self.params[key + ".up"]).to(output.dtype)
        return hook

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def param_groups(self, unet_lr, text_encoder_lr):
        return [{"params": list(self.params.values()), "lr": unet_lr}]

    def set_batch(self, batch):
        pass

    def train(self, mode=True):
        self.training = mode

    def state_dict(self):
        return {k: v.detach() for k, v in self.params.items()}

    def load_state_dict(self, sd):
        with torch.no_grad():
            for k, v in sd.items():
                self.params[k].copy_(v)

    def metadata(self):
        return {"kind": self.kind}

    def save(self, path, dtype, metadata):
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.params.items()}
        safetensors.torch.save_file(tensors, path, metadata={**metadata, **self.metadata()})


class ListData:
    """n random latents with captions, batch size bs, a seeded order per epoch; optionally a
    NaN batch at (epoch, index) to make the loss diverge."""

    def __init__(self, n: int = 4, bs: int = 2, size: int = 8, seed: int = 1, nan_at: tuple[int, int] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, 4, size, size, generator=g)
        self.captions = [f"a photo of thing {i}" for i in range(n)]
        self.bs, self.size, self.nan_at = bs, size, nan_at

    def __len__(self):
        return -(-len(self.latents) // self.bs)

    def batches(self, epoch, start=0):
        order = torch.randperm(len(self.latents), generator=torch.Generator().manual_seed(1000 + epoch)).tolist()
        for b in range(start, len(self)):
            idx = order[b * self.bs:(b + 1) * self.bs]
            lat = self.latents[idx]
            if self.nan_at == (epoch, b):
                lat = lat * float("nan")
            px = self.size * 8
            yield Batch(lat, [self.captions[i] for i in idx], [(px, px)] * len(idx), [(0, 0)] * len(idx), [(px, px)] * len(idx))

    def fixed_captions(self):
        return sorted(set(self.captions))


def no_metadata(facts: dict) -> dict[str, str]:
    return {"ss_steps": str(facts["steps"]), "facts": json.dumps(sorted(facts))}


def eval_loss(tm, text, data, seed: int = 3, n_draws: int = 4) -> float:
    """Mean eps/v loss of the model as it is over fixed noise and timesteps: a measure that
    does not jitter with the training draws."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(0):
            for _ in range(n_draws):
                lat = batch.latents.float()
                noise = torch.randn(lat.shape, generator=g)
                t = torch.randint(0, 1000, (lat.shape[0],), generator=g)
                context, pooled = text.encode(batch.captions, tm.device)
                y = tm.adm(pooled, batch.original_sizes, batch.crop_top_left, batch.target_sizes)
                pred = tm.predict(tm.schedule.noisy_input(lat, noise, t), t, context, y)
                total += F.mse_loss(pred, tm.schedule.target(lat, noise, t)).item()
                count += 1
    return total / count
