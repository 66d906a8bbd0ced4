"""ControlNet-LLLite as a TrainableAdapter (training/adapter.py), built from lllite/'s modules
and saved by lllite/weights.py, so a trained file is exactly what the apply node reads.

The frozen U-Net is left untouched; forward pre-hooks do what kohya's wrapped Linears do:
- on the U-Net: the guide images of this call (the batch's, or a sample guide fitted to the
  latent's pixel size);
- on each transformer (input_blocks.4.1, middle_block.1 ...): every module's projected guide
  embedding on that block's token grid, computed once per U-Net call, outside the
  checkpointed transformer blocks (so gradient checkpointing recomputes nothing stale);
- on each wrapped Linear (attn1 to_q/to_k/to_v, attn2 to_q): input + module delta.
The embedding goes through LLLiteModule.project_guide, the function the inference patch
uses, so training and inference compute the same thing.
"""
import logging

import torch
import torch.utils.checkpoint

from ..lllite.guide import fit_guide
from ..lllite.module import LLLiteNetwork, build_network, layout_for
from ..lllite.weights import read_lllite, save_lllite
from .adapter import GuidedAdapter, batch_guides, load_exact
from .data.batch import Batch

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # pixels per latent pixel (SD1.x / SDXL VAE)


class LLLiteAdapter(GuidedAdapter):
    kind = "lllite"
    trains_text_encoders = False

    def __init__(self, family: str, cond_emb_dim: int = 32, network_dim: int = 64, dropout: float | None = None,
                 network_weights: str | None = None, checkpoint_embeddings: bool = False, name: str = "LLLite",
                 output_blocks: bool = False):
        """family: "sdxl" or "sd15" (the module layout, lllite/module.py); output_blocks: a new
        network also gets modules on the decoder's transformers. network_weights: an LLLite file
        to start from (its modules and dims win over output_blocks and cond_emb_dim/network_dim).
        checkpoint_embeddings: recompute the guide embeddings in backward instead of keeping
        their activations (with gradient checkpointing)."""
        self.layout = layout_for(family, output_blocks)
        if cond_emb_dim < 2 or cond_emb_dim % 2:
            raise ValueError(f"cond_emb_dim must be an even number >= 2, got {cond_emb_dim}")
        if network_dim < 1:
            raise ValueError(f"network_dim must be >= 1, got {network_dim}")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.cond_emb_dim, self.network_dim = cond_emb_dim, network_dim
        self.dropout = dropout or 0.0
        self.checkpoint_embeddings = checkpoint_embeddings
        self.name = name
        self.network: LLLiteNetwork | None = None
        if network_weights:
            self.network = read_lllite(network_weights)
            dims = {(self.network.module(k).cond_emb_dim, self.network.module(k).mlp_dim) for k in self.network.paths}
            if dims != {(cond_emb_dim, network_dim)}:
                log.warning("%s: starting from its dims %s instead of cond_emb_dim %d / network_dim %d",
                            network_weights, sorted(dims), cond_emb_dim, network_dim)
            if self.network.layout() != self.layout:
                log.warning("%s: starting from its %s layout instead of %s", network_weights,
                            self.network.layout_name(), self.layout.display)
        self._handles = []
        self._guides: torch.Tensor | None = None  # (G, 3, H, W) in [-1, 1], CPU or device
        self._call_guide: torch.Tensor | None = None  # the guides fitted for the running U-Net call
        self._projected: dict[str, torch.Tensor] = {}
        self._block_keys: dict[str, list[str]] = {}

    # -- building and hooks ---------------------------------------------------------------

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        """Builds the network on first attach (kohya's init, global RNG; on the model's device:
        attach after the model is where it trains) and hooks it onto the U-Net."""
        if self.network is None:
            self.network = build_network(diffusion_model, self.layout, self.cond_emb_dim, self.network_dim, self.name)
        self.network.check_fits(diffusion_model, f"'{self.layout.display}'")
        # fp32 master weights whatever the file's save precision; autocast sets the compute dtype
        self.network.to(device=next(diffusion_model.parameters()).device, dtype=torch.float32)
        self.detach()
        layers = dict(diffusion_model.named_modules())
        self._block_keys = {}
        for key, path in self.network.paths.items():
            self._block_keys.setdefault(path.split(".transformer_blocks.")[0], []).append(key)
        self._handles.append(diffusion_model.register_forward_pre_hook(self._begin_call))
        for block, keys in self._block_keys.items():
            self._handles.append(layers[block].register_forward_pre_hook(self._block_hook(keys)))
        for key, path in self.network.paths.items():
            self._handles.append(layers[path].register_forward_pre_hook(self._linear_hook(key)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._projected = {}
        self._call_guide = None

    def _begin_call(self, module, args):
        if self._guides is None:
            raise RuntimeError("LLLite training: the U-Net was called without a guide image (set_batch or using_guide first)")
        x = args[0]
        height, width = x.shape[-2] * LATENT_SCALE, x.shape[-1] * LATENT_SCALE
        guide = self._guides.to(x.device, torch.float32)
        if guide.shape[-2:] != (height, width):  # a sample guide of another size, as the apply node fits it
            guide = fit_guide((guide + 1) / 2, height, width, "crop") * 2 - 1
        self._call_guide = guide
        self._projected = {}

    def _block_hook(self, keys: list[str]):
        def hook(module, args):
            h, w = args[0].shape[-2:]
            for key in keys:
                m = self.network.module(key)
                if self.checkpoint_embeddings and torch.is_grad_enabled():
                    self._projected[key] = torch.utils.checkpoint.checkpoint(
                        m.project_guide, self._call_guide, h, w, use_reentrant=False)
                else:
                    self._projected[key] = m.project_guide(self._call_guide, h, w)
        return hook

    def _linear_hook(self, key: str):
        module = self.network.module(key)

        def hook(layer, args):
            x = args[0]
            return (x + module.delta(x, self._projected[key], self.dropout).to(x.dtype),) + tuple(args[1:])
        return hook

    # -- TrainableAdapter -----------------------------------------------------------------

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        if self.network is None:
            raise RuntimeError("LLLite parameters exist only after attach()")
        return [{"params": list(self.network.parameters()), "lr": unet_lr, "name": "lllite"}] if unet_lr else []

    def set_batch(self, batch: Batch) -> None:
        self._guides = batch_guides(batch, "LLLite")

    def train(self, mode: bool = True) -> None:
        if self.network is not None:
            self.network.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Exactly this network's tensors (kohya keys, same shapes)."""
        if self.network is None:
            raise RuntimeError("LLLite weights can only be loaded after attach() built the modules")
        load_exact(self.network.state_dict(), sd, f"LLLite weights do not fit this network ({self.network.describe()})")

    def metadata(self) -> dict[str, str]:
        """The dims for tools that list them (sd-scripts' LLLite trainer writes no ss_* key);
        the modelspec keys that follow from the layout come from save_lllite."""
        m = self.network.module(next(iter(self.network.paths)))
        return {
            "ss_network_module": "networks.control_net_lllite",
            "ss_network_dim": str(m.mlp_dim),
            "ss_cond_emb_dim": str(m.cond_emb_dim),
            "ss_network_dropout": str(self.dropout),
        }

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        save_lllite(path, self.network, self.layout.architecture, dtype, {**metadata, **self.metadata()})
