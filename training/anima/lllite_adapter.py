"""Anima-LLLite v2 as a TrainableAdapter (training/adapter.py), built from lllite/anima's network
and saved by lllite/anima/weights.py, so a trained file is what ApplyLLLite and core's
ModelPatchLoader + AnimaLLLiteApply read.

The frozen DiT is left untouched; forward pre-hooks do what core's patches do at inference:
- on the DiT: the conditioning embedding of this call (the batch's guides, for inpainting with
  a fresh random mask as fourth channel, fitted to the latent's pixel size), computed once;
- on each wrapped Linear (blocks.N self_attn q/k/v_proj, cross_attn q_proj, mlp layer1):
  input + module delta, the function the inference patch uses.
"""
import logging
import math
from contextlib import contextmanager

import torch

from ...lllite.anima.guide import conditioning_input
from ...lllite.anima.module import DEFAULT_ASPP, GUIDE_STRIDE, TARGET_LINEARS, build_for_model
from ...lllite.anima.weights import read_anima_lllite, save_anima_lllite
from ..adapter import batch_guides, load_exact
from ..data.batch import Batch
from .masks import random_masks

log = logging.getLogger(__name__)


class AnimaLLLiteAdapter:
    kind = "lllite"
    trains_text_encoders = False

    def __init__(self, cond_emb_dim: int = 32, network_dim: int = 64, cond_dim: int = 32, resblocks: int = 1,
                 aspp: tuple = DEFAULT_ASPP, inpainting: bool = False, masked_input: bool = True,
                 network_weights: str | None = None, seed: int = 0, name: str = "Anima LLLite"):
        """inpainting: a 4-channel guide (image + mask), masks drawn by training/anima/masks.py;
        masked_input: the image is blanked under the mask (written to the file's metadata).
        network_weights: an Anima LLLite file to start from (its dims and kind win)."""
        self.dims = dict(cond_emb_dim=cond_emb_dim, mlp_dim=network_dim, cond_dim=cond_dim, resblocks=resblocks,
                         aspp=tuple(aspp), in_channels=4 if inpainting else 3,
                         inpaint_masked_input=bool(inpainting and masked_input))
        self.name = name
        self.network = read_anima_lllite(network_weights) if network_weights else None
        if self.network is not None:
            self.network.requires_grad_(True)
        self.generator = torch.Generator().manual_seed(seed)  # inpainting masks
        self._handles = []
        self._guides = None  # (G, 3, H, W) in [-1, 1]
        self._masks = None  # (G, 1, H, W) for a sample guide, or None (random masks per batch)
        self._emb = None

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict) -> None:
        if self.network is None:
            self.network = build_for_model(diffusion_model, name=self.name, **self.dims)
        self.network.check_fits(diffusion_model, "Anima")
        self.network.to(device=next(diffusion_model.parameters()).device, dtype=torch.float32)
        self.detach()
        layers = dict(diffusion_model.named_modules())
        self._handles.append(diffusion_model.register_forward_pre_hook(self._begin_call))
        for (block, target), name in self.network.targets.items():
            hook = self._linear_hook(getattr(self.network, name))
            self._handles.append(layers[f"blocks.{block}.{TARGET_LINEARS[target]}"].register_forward_pre_hook(hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._emb = None

    def _begin_call(self, module, args):
        if self._guides is None:
            raise RuntimeError("Anima LLLite training: the DiT was called without a guide image (set_batch or using_guide first)")
        x = args[0]  # (B, C, T, H, W) latent; the DiT pads H, W to its 2x2 patches
        patch = module.patch_spatial
        height, width = math.ceil(x.shape[-2] / patch) * GUIDE_STRIDE, math.ceil(x.shape[-1] / patch) * GUIDE_STRIDE
        guide = (self._guides.to(x.device, torch.float32) + 1) / 2
        masks = self._masks
        if self.network.inpainting and masks is None:
            masks = random_masks(guide.shape[0], height, width, self.generator)
        image = conditioning_input(guide, None if masks is None else masks.to(x.device), height, width,
                                   self.network.in_channels, self.network.inpaint_masked_input)
        self._emb = self.network.encode(image)

    def _linear_hook(self, module):
        def hook(layer, args):
            x = args[0]
            flat = x.flatten(1, 3) if x.ndim == 5 else x
            emb = self._emb if self._emb.shape[0] == flat.shape[0] else self._emb.repeat(flat.shape[0] // self._emb.shape[0], 1, 1)
            return (x + module.delta(flat, emb.to(flat.dtype)).to(x.dtype).view(x.shape),) + tuple(args[1:])
        return hook

    # -- TrainableAdapter -----------------------------------------------------------------

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        if self.network is None:
            raise RuntimeError("Anima LLLite parameters exist only after attach()")
        return [{"params": list(self.network.parameters()), "lr": unet_lr, "name": "lllite"}] if unet_lr else []

    def set_batch(self, batch: Batch) -> None:
        self._guides, self._masks = batch_guides(batch, "Anima LLLite"), None

    @contextmanager
    def using_guide(self, guide: torch.Tensor, mask: torch.Tensor | None = None):
        """Within the block, DiT calls use `guide` ((G, 3, H, W) in [-1, 1]) and for inpainting
        `mask` ((G, 1, H, W), None = nothing to repaint); the batch's come back afterwards."""
        before = self._guides, self._masks
        self._guides = guide
        self._masks = mask if mask is not None else (torch.zeros_like(guide[:, :1]) if self.network.inpainting else None)
        try:
            yield
        finally:
            self._guides, self._masks = before

    def train(self, mode: bool = True) -> None:
        if self.network is not None:
            self.network.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        load_exact(self.network.state_dict(), sd, f"Anima LLLite weights do not fit this network ({self.network.describe()})")

    def metadata(self) -> dict[str, str]:
        return {"ss_network_module": "networks.control_net_lllite_anima", "ss_network_dim": str(self.network.mlp_dim),
                "ss_cond_emb_dim": str(self.network.cond_emb_dim)}

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        save_anima_lllite(path, self.network, dtype, {**metadata, **self.metadata()})


def anima_lllite_adapter(cfg) -> AnimaLLLiteAdapter:
    """The adapter TrainLLLite builds on an Anima model from its TrainConfig: cond_emb_dim,
    network_dim, network_weights, seed; network_args `inpainting=true` (4-channel guide, random
    masks) and `masked_input=false` (keep the image under the mask)."""
    args = {k: str(v).strip().lower() for k, v in (cfg.network_args or {}).items()}
    unknown = sorted(set(args) - {"inpainting", "masked_input"})
    if unknown:
        raise ValueError(f"Anima LLLite network_args: unknown {unknown}; known: inpainting, masked_input")
    if cfg.lllite_output_blocks:
        raise ValueError("lllite_output_blocks: Anima's DiT has no output blocks (its LLLite sits on every block "
                         "already); turn lllite_output_blocks off for Anima")
    return AnimaLLLiteAdapter(cond_emb_dim=cfg.cond_emb_dim, network_dim=cfg.network_dim,
                              inpainting=args.get("inpainting", "false") == "true",
                              masked_input=args.get("masked_input", "true") == "true",
                              network_weights=cfg.network_weights, seed=cfg.seed, name=cfg.output_name)
