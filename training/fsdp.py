"""Full fine-tuning sharded with FSDP (torch.distributed.fsdp.fully_shard, "FSDP2") under torchrun.

Each rank keeps 1/world of every U-Net weight, of its gradient and of its optimizer state; a
layer's full weights are all-gathered just for its forward and backward, and gradients are
reduce-scattered (averaged) by FSDP itself, so the engine's own gradient averaging
(distributed.Group.average_gradients) skips these weights. Every layer of the U-Net's
input_blocks / middle_block / output_blocks is one FSDP unit, the rest of the U-Net the root's.
Text encoders are not trained in a sharded run (refused: gradient clipping and the optimizer's
foreach steps cannot mix sharded and whole weights).

Saving: every rank joins in gathering the full weights (full_weights), rank 0 writes them.
At the end (release) the trained weights are gathered back into plain parameters, so the model
is as after an unsharded run. Tested on CPU (gloo); on GPUs (nccl) the same calls, not yet run there.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from .distributed import Group

log = logging.getLogger(__name__)


def _units(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of the U-Net's blocks (res block, transformer, sampler), each sharded and
    gathered on its own, so the whole model never is at once. Not the blocks themselves: ComfyUI
    calls a block's layers one by one (forward_timestep_embed), never the block, whose hooks
    would then not run."""
    blocks = [*getattr(unet, "input_blocks", []), getattr(unet, "middle_block", None), *getattr(unet, "output_blocks", [])]
    return [layer for block in blocks if block is not None for layer in block
            if any(True for _ in layer.parameters())]


def _owners(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    return [(m, name) for m in module.modules() for name, _ in m.named_parameters(recurse=False)]


class Sharding:
    """The U-Net sharded across the group's ranks; made by shard()."""

    def __init__(self, unet: torch.nn.Module, group: Group):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.group = group
        self.full_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
        if group.device.type == "cuda":  # the peak reported is the sharded training's, not the whole model's load
            torch.cuda.reset_peak_memory_stats(group.device)
        mesh = init_device_mesh(group.device.type, (group.world,))
        for unit in _units(unet):
            fully_shard(unit, mesh=mesh)
        fully_shard(unet, mesh=mesh)
        self._owners = _owners(unet)
        self.optimizer = None  # the one that steps these weights, seen at its first step (for report())
        self._hook = register_optimizer_step_post_hook(self._seen)

    def _seen(self, optimizer, *_) -> None:
        if self.optimizer is None and self.sharded([p for g in optimizer.param_groups for p in g["params"]]):
            self.optimizer = optimizer

    def sharded(self, params: list[torch.Tensor]) -> set[int]:
        """ids of the params FSDP reduces itself."""
        return {id(p) for p in params if isinstance(p, DTensor)}

    @contextmanager
    def full_weights(self):
        """Within the block process 0's U-Net holds its full weights as plain CPU tensors (what
        it writes), the shards come back afterwards. A collective: every rank must enter; weights
        are gathered one at a time, so a GPU holds one full weight beyond its shards."""
        shards = [(m, name, m._parameters[name]) for m, name in self._owners]
        with torch.no_grad():
            for m, name, p in shards:
                full = p.full_tensor().to("cpu")
                if self.group.is_main:
                    m._parameters[name] = torch.nn.Parameter(full, requires_grad=False)
        try:
            yield
        finally:
            for m, name, p in shards:
                m._parameters[name] = p

    def local_bytes(self) -> tuple[int, int]:
        """(this rank's bytes of U-Net parameters, of their optimizer state)."""
        optimizer = self.optimizer
        params = [m._parameters[name] for m, name in self._owners]
        local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
        param_bytes = sum(t.numel() * t.element_size() for t in local)
        state_bytes = 0
        if optimizer is not None:
            for p in params:
                for v in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v):
                        t = v.to_local() if isinstance(v, DTensor) else v
                        state_bytes += t.numel() * t.element_size()
        return param_bytes, state_bytes

    def report(self) -> list[dict]:
        """Per rank (a collective): sharded parameter and optimizer-state bytes, and the peak
        CUDA memory when on a GPU. Logged by rank 0."""
        param_bytes, state_bytes = self.local_bytes()
        cuda = self.group.device.type == "cuda"
        mine = {"rank": self.group.rank, "param_bytes": param_bytes, "optimizer_state_bytes": state_bytes,
                "full_param_bytes": self.full_bytes,
                "max_memory_allocated": torch.cuda.max_memory_allocated(self.group.device) if cuda else None}  # since shard()
        everyone: list = [None] * self.group.world
        dist.all_gather_object(everyone, mine)
        if self.group.is_main:
            for r in everyone:
                peak = f", peak CUDA memory {r['max_memory_allocated'] / 2**20:.1f} MiB" if r["max_memory_allocated"] else ""
                log.info("FSDP rank %d of %d: U-Net parameters %.2f MiB of %.2f MiB (%.1f %%), optimizer state %.2f MiB%s",
                         r["rank"], self.group.world, r["param_bytes"] / 2**20, r["full_param_bytes"] / 2**20,
                         100 * r["param_bytes"] / r["full_param_bytes"], r["optimizer_state_bytes"] / 2**20, peak)
        return everyone

    def release(self) -> None:
        """The memory report, then the trained weights gathered back into the U-Net as plain,
        frozen parameters (collectives: every rank calls it)."""
        self._hook.remove()
        self.report()
        with torch.no_grad():
            for m, name in self._owners:
                p = m._parameters[name]
                m._parameters[name] = torch.nn.Parameter(p.full_tensor() if isinstance(p, DTensor) else p.detach(),
                                                         requires_grad=False)


def problems(cfg, trains_text_encoders: bool = False) -> list[str]:
    """Options a sharded run cannot honour (TrainConfig), in the words of full_model's refusal."""
    out = []
    if trains_text_encoders:
        out.append("fsdp shards the U-Net only, and torch cannot clip or step sharded and whole weights together: "
                   "train the text encoders in an unsharded run")
    if cfg.save_state or cfg.save_state_on_train_end or cfg.resume:
        out.append("fsdp: resumable states of a sharded run are not implemented (each rank holds a part of the optimizer "
                   "state): set save_state = false and drop resume")
    if cfg.fused_backward_pass:
        out.append("fsdp: fused_backward_pass steps whole weights in their gradient hooks; FSDP reduces shards: choose one")
    if cfg.full_bf16:
        out.append("fsdp: full_bf16 re-types the weights FSDP has sharded: use mixed_precision without full_bf16")
    if cfg.sample_prompts and (cfg.sample_every_n_steps or cfg.sample_every_n_epochs):
        out.append("fsdp: sample images run the model on process 0 alone, which a sharded model cannot: "
                   "sample from the saved checkpoint instead")
    return out


def shard(unet: torch.nn.Module, group: Group) -> Sharding | None:
    """The U-Net sharded over `group` (None in a single process: nothing to shard)."""
    if not group.active:
        log.info("fsdp: a single process; nothing to shard")
        return None
    return Sharding(unet, group)


# -- the engine's hooks: an adapter with a `sharding` attribute (a Sharding or None) ----------------

def unreduced(adapter, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The params whose gradients the engine still averages (all but the FSDP-sharded ones)."""
    sharding = getattr(adapter, "sharding", None)
    if sharding is None:
        return params
    done = sharding.sharded(params)
    return [p for p in params if id(p) not in done]


def idle_pass(adapter, model, latents: torch.Tensor) -> None:
    """On a rank that has no sample of this global batch: the sharded U-Net's forward and backward
    still run (FSDP's all-gathers and reduce-scatters need every rank), on one zero input with
    the loss times 0, so this rank adds nothing to the averaged gradient. model: the engine's
    TrainingModel; latents: the empty slice (its last two sizes are the batch's latent size)."""
    if getattr(adapter, "sharding", None) is None:
        return
    config, dev = model.patcher.model.model_config.unet_config, model.device
    x = torch.zeros((1, model.patcher.model.latent_format.latent_channels, *latents.shape[2:]), device=dev)
    context = torch.zeros((1, 77, config["context_dim"]), device=dev)
    y = torch.zeros((1, config["adm_in_channels"]), device=dev) if config.get("adm_in_channels") else None
    (model.predict(x, torch.full((1,), 500, device=dev), context, y).sum() * 0).backward()


def full_weights(adapter):
    """Context in which a sharded adapter's model holds its full weights (every rank enters)."""
    sharding = getattr(adapter, "sharding", None)
    return sharding.full_weights() if sharding is not None else nullcontext()
