"""LoRA as a TrainableAdapter (training/adapter.py): kohya-compatible LoRA / DyLoRA on the
U-Net and the CLIP text encoders of SD1.5 and SDXL."""
import json
import logging

import torch

from ..data.batch import Batch
from .blocks import block_index, block_lr_weights, block_ranks
from .config import LoRAConfig
from .file import base_model_metadata, load_lora, save_lora, split_modules
from .network import LoRAModule
from .targets import Target, lora_family, text_encoder_targets, unet_targets


class LoRAAdapter:
    kind = "lora"

    def __init__(self, config: LoRAConfig, model_config, dtype: torch.dtype = torch.float32):
        """model_config: the ComfyUI model config (ModelPatcher.model.model_config); it
        tells SD1.5 from SDXL and gives SD1.5's diffusers key names. dtype: LoRA weights."""
        self.config = config
        self.family = lora_family(model_config)
        self.unet_config = model_config.unet_config
        self.dtype = dtype
        self.trains_text_encoders = config.train_text_encoder
        self.lr_weights = block_lr_weights(self.family, config.down_lr_weight, config.mid_lr_weight,
                                           config.up_lr_weight, config.block_lr_zero_threshold)
        self.start = None
        if config.network_weights:
            tensors, _ = load_lora(config.network_weights)
            self.start = self._trained_parts(split_modules(tensors, config.network_weights), config.network_weights)
        self.modules: dict[str, LoRAModule] = {}
        self.parts: dict[str, str] = {}  # module name -> "unet" / "te1" / "te2" / "te"

    def _trained_parts(self, modules: dict, source: str) -> dict:
        kept = {n: m for n, m in modules.items()
                if (self.config.train_unet if n.startswith("lora_unet_") else self.config.train_text_encoder)}
        if len(kept) < len(modules):
            logging.warning("%s: %d LoRA modules of parts not trained now (U-Net only / text encoder only) are left out",
                            source, len(modules) - len(kept))
        if not kept:
            raise ValueError(f"{source}: has no LoRA modules for the parts being trained")
        return kept

    # -- building -------------------------------------------------------------------------

    def _targets(self, diffusion_model, text_encoders) -> list[Target]:
        c = self.config
        targets = []
        if c.train_unet:
            with_conv = self.start is not None or c.conv_dim is not None or c.conv_block_dims is not None
            targets += unet_targets(diffusion_model, self.family, self.unet_config, with_conv)
        if c.train_text_encoder:
            targets += text_encoder_targets(text_encoders, self.family)
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError("two layers map to the same LoRA name: pass one CLIP encoder per text-encoder role")
        return targets

    def _rank_alpha(self, target: Target, blocks) -> tuple[int, float | None]:
        """Rank (0 = no module) and alpha of a target from the options."""
        c = self.config
        if blocks is not None and target.part == "unet":
            dims, alphas, conv_dims, conv_alphas = blocks
            i = block_index(target.name, self.family)
            if target.is_conv3x3:
                return (conv_dims[i], conv_alphas[i]) if conv_dims is not None else (0, None)
            return dims[i], alphas[i]
        if target.is_conv3x3:
            return (c.conv_dim, 1.0 if c.conv_alpha is None else c.conv_alpha) if c.conv_dim else (0, None)
        return c.dim, c.alpha

    def _build(self, targets: list[Target]) -> None:
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        blocks = block_ranks(self.family, c.dim, c.alpha, c.conv_dim, c.conv_alpha, c.block_dims, c.block_alphas,
                             c.conv_block_dims, c.conv_block_alphas, self.lr_weights)
        by_name = {t.name: t for t in targets}
        if self.start is not None:
            unknown = sorted(set(self.start) - set(by_name))
            if unknown:
                raise ValueError(f"{c.network_weights}: LoRA modules match no layer of this {self.family} model: {unknown[:5]}")
            specs = {n: (p["down"].shape[0], float(p["alpha"]) if "alpha" in p else None) for n, p in self.start.items()}
        else:
            specs = {t.name: self._rank_alpha(t, blocks) for t in targets}
        for name in sorted(n for n, (rank, _) in specs.items() if rank):
            rank, alpha = specs[name]
            target = by_name[name]
            self.modules[name] = LoRAModule(
                name, target.module, rank, alpha, unit=c.unit, dropout=c.dropout, rank_dropout=c.rank_dropout,
                module_dropout=c.module_dropout, generator=generator, dtype=self.dtype)
            self.parts[name] = target.part
        if not self.modules:
            raise ValueError("the LoRA options leave no module to train (all ranks or block lr weights are 0)")
        if self.start is not None:
            self.load_state_dict({f"{n}{s}": t for n, p in self.start.items()
                                  for s, t in ((".lora_down.weight", p["down"]), (".lora_up.weight", p["up"]))})
            self.start = None

    # -- TrainableAdapter -----------------------------------------------------------------

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        """Hooks the LoRA modules onto the layers: built on first attach, moved to the
        layers' device on later ones (parameters keep their identity, so an optimizer built
        on param_groups() stays valid)."""
        targets = self._targets(diffusion_model, text_encoders)
        if not self.modules:
            self._build(targets)
        layers = {t.name: t.module for t in targets}
        missing = sorted(set(self.modules) - set(layers))
        if missing:
            raise ValueError(f"this model has no layers for LoRA modules {missing[:5]}")
        self.detach()
        for name, module in self.modules.items():
            module.to(layers[name].weight.device)
            module.attach(layers[name])

    def detach(self) -> None:
        for module in self.modules.values():
            module.detach()

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        """One group for the text encoders (text_encoder_lr, or unet_lr when None), one for
        the U-Net or, with block lr weights, one per block (unet_lr x weight). Groups with
        lr 0 are left out: those modules stay at their start."""
        groups = []
        te = [p for n, m in self.modules.items() if self.parts[n] != "unet" for p in m.parameters()]
        te_lr = unet_lr if text_encoder_lr is None else text_encoder_lr
        if te and te_lr:
            groups.append({"params": te, "lr": te_lr, "name": "text_encoder"})
        blocks: dict[int | None, list] = {}
        for name, module in self.modules.items():
            if self.parts[name] == "unet":
                key = block_index(name, self.family) if self.lr_weights is not None else None
                blocks.setdefault(key, []).extend(module.parameters())
        for key in sorted(blocks, key=lambda k: -1 if k is None else k):
            lr = unet_lr if key is None else unet_lr * self.lr_weights[key]
            if lr:
                groups.append({"params": blocks[key], "lr": lr, "name": "unet" if key is None else f"unet_block{key}"})
        return groups

    def set_batch(self, batch: Batch) -> None:
        """LoRA needs nothing beyond latents and text."""

    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {}
        for name, module in self.modules.items():
            sd[f"{name}.lora_down.weight"] = module.down_weight.detach()
            sd[f"{name}.lora_up.weight"] = module.up_weight.detach()
            sd[f"{name}.alpha"] = torch.tensor(module.alpha)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Exactly this network's modules; alpha is optional (kept when absent)."""
        if not self.modules:
            raise RuntimeError("LoRA weights can only be loaded after attach() built the modules")
        parts = split_modules(sd, "LoRA state dict")
        missing, unexpected = sorted(set(self.modules) - set(parts)), sorted(set(parts) - set(self.modules))
        if missing or unexpected:
            raise ValueError(f"LoRA state dict does not fit this network: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, p in parts.items():
            module = self.modules[name]
            module.set_weights(p["down"], p["up"])
            if "alpha" in p:
                module.set_alpha(float(p["alpha"]))

    def metadata(self) -> dict[str, str]:
        c = self.config
        ranks = sorted({m.rank for m in self.modules.values()})
        alphas = sorted({m.alpha for m in self.modules.values()})
        args = c.network_args()
        return {
            **base_model_metadata(self.family),
            "ss_network_module": c.network_module,
            "ss_network_dim": str(c.dim if c.network_weights is None else max(ranks)),
            "ss_network_alpha": str(c.alpha if c.network_weights is None else alphas[-1]),
            **({"ss_network_args": json.dumps(args)} if args else {}),  # sd-scripts: only when network_args are given
            "ss_network_dropout": str(c.dropout),
        }

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        save_lora(path, self.state_dict(), {**metadata, **self.metadata()}, dtype)
