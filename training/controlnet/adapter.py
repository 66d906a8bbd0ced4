"""ControlNet as a TrainableAdapter (training/adapter.py), lllyasviel's ControlLDM recipe.

A forward pre-hook on the U-Net runs core's ControlNet on the call's input (noisy latent,
timestep, text, SDXL's y, the guide in [0, 1] as core feeds it) and hands the outputs to the
U-Net as transformer patches: the middle output after the middle block, zero-conv k on the
skip of input block k. The patches add out of place (core's `control` argument adds in place,
which autograd refuses for skips that later blocks saved); the sum is the same as core's.
sd_locked=False also trains the U-Net's decoder (output_blocks, out); its values are put back
when training ends (the MODEL is shared with the graph) and saved as a whole U-Net file.
"""
from pathlib import Path

import torch

from ...lllite.guide import fit_guide
from ..comfy_bridge.model import set_gradient_checkpointing
from ..adapter import GuidedAdapter, batch_guides, load_exact
from ..data.batch import Batch
from .layouts import AUTO, file_names, resolve_layout
from .network import ControlNetError, controlnet_from_unet, control_outputs, new_controlnet
from .weights import DECODER_PREFIXES, read_controlnet, save_controlnet, save_unet

LATENT_SCALE = 8


def unet_file_for(controlnet_path: str | Path) -> Path:
    """Where the sd_locked=False U-Net goes: beside the ControlNet file, `<name>_unet.safetensors`."""
    p = Path(controlnet_path)
    return p.with_name(p.stem + "_unet" + p.suffix)


class ControlNetAdapter(GuidedAdapter):
    kind = "controlnet"
    trains_text_encoders = False

    def __init__(self, unet_config: dict, family: str, control_weights: str | None = None, sd_locked: bool = True,
                 only_mid_control: bool = False, strength: float = 1.0, guide_dropout: float = 0.0,
                 gradient_checkpointing: bool = False, file_layout: str = AUTO):
        """control_weights: a ControlNet file to start from (else tool_add_control on the base).
        strength: multiplies every control output while training (lllyasviel's control_scales).
        guide_dropout: probability of a black guide per sample (trains the no-guide case).
        file_layout: layouts.LAYOUTS, decided (and refused if core could not read it) at attach."""
        if not 0.0 <= guide_dropout <= 1.0:
            raise ControlNetError(f"guide_dropout must be in [0, 1], got {guide_dropout}")
        self.unet_config, self.family = unet_config, family
        self.control_weights = control_weights
        self.sd_locked, self.only_mid_control = sd_locked, only_mid_control
        self.strength, self.guide_dropout = strength, guide_dropout
        self.gradient_checkpointing = gradient_checkpointing
        self.file_layout = self.layout = file_layout
        self.control: torch.nn.Module | None = None
        self.diffusion_model: torch.nn.Module | None = None
        self._decoder: dict[str, torch.nn.Parameter] = {}
        self._decoder_original: dict[str, torch.Tensor] = {}
        self._handles = []
        self._guides: torch.Tensor | None = None  # (G, 3, H, W) in [-1, 1], the batch's or a sample guide
        self.training = False

    # -- building and the hook ----------------------------------------------------------------

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        self.detach()
        self.diffusion_model = diffusion_model
        device = next(diffusion_model.parameters()).device
        if self.control is None:
            if self.control_weights:
                self.control = new_controlnet(self.unet_config, device)
                self._load(read_controlnet(self.control_weights), self.control_weights)
            else:
                self.control = controlnet_from_unet(diffusion_model, self.unet_config)
            self.layout = resolve_layout(self.file_layout, self.family, self.control, self.unet_config)
        self.control.to(device=device, dtype=torch.float32)  # fp32 master weights; autocast sets compute
        self.control.requires_grad_(True)
        set_gradient_checkpointing(self.control, self.gradient_checkpointing)
        if not self.sd_locked:
            self._unlock_decoder(diffusion_model)
        self._handles.append(diffusion_model.register_forward_pre_hook(self._inject, with_kwargs=True))

    def _unlock_decoder(self, diffusion_model: torch.nn.Module) -> None:
        for name, p in diffusion_model.named_parameters():
            if name.startswith(DECODER_PREFIXES):
                self._decoder_original.setdefault(name, p.detach().clone())
                p.data = p.data.float()
                p.requires_grad_(True)
                self._decoder[name] = p

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        with torch.no_grad():
            for name, p in self._decoder.items():
                original = self._decoder_original[name]
                p.requires_grad_(False)
                p.data = original.to(p.device)
        self._decoder = {}

    def hint_for(self, x: torch.Tensor) -> torch.Tensor:
        """The guide of this U-Net call in [0, 1] at the latent's pixel size and batch."""
        if self._guides is None:
            raise RuntimeError("ControlNet training: the U-Net was called without a guide image (set_batch or using_guide first)")
        height, width = x.shape[-2] * LATENT_SCALE, x.shape[-1] * LATENT_SCALE
        hint = (self._guides.to(x.device, torch.float32) + 1) / 2
        if hint.shape[-2:] != (height, width):
            hint = fit_guide(hint, height, width, "crop")
        if hint.shape[0] != x.shape[0]:  # a sample guide under CFG: cond and uncond halves alike
            hint = hint.repeat(-(-x.shape[0] // hint.shape[0]), 1, 1, 1)[:x.shape[0]]
        if self.training and self.guide_dropout:
            keep = (torch.rand(hint.shape[0], device="cpu") >= self.guide_dropout).to(hint.device, hint.dtype)
            hint = hint * keep[:, None, None, None]
        return hint

    def _inject(self, module, args, kwargs):
        x = args[0]  # the U-Net's own input stays as it is; only the ControlNet's copy is cast
        timesteps = args[1] if len(args) > 1 else kwargs["timesteps"]
        context, y = kwargs.get("context"), kwargs.get("y")
        hint = self.hint_for(x)
        if not torch.is_autocast_enabled(x.device.type):  # sampling: a half model's inputs, fp32 ControlNet weights
            dtype = next(self.control.parameters()).dtype
            x, timesteps, context, hint = (t.to(dtype) for t in (x, timesteps, context, hint))
            y = None if y is None else y.to(dtype)
        outputs, middle = control_outputs(self.control, x, hint, timesteps, context, y)
        options = dict(kwargs.get("transformer_options") or {})
        patches = {k: list(v) for k, v in options.get("patches", {}).items()}
        s = self.strength
        patches.setdefault("middle_block_after_patch", []).append(lambda a: {**a, "h": a["h"] + middle.to(a["h"].dtype) * s})
        if not self.only_mid_control:
            def skip_patch(h, hsp, opts):
                ctrl = outputs[len(outputs) - 1 - opts["block"][1]]
                return h, hsp + ctrl.to(hsp.dtype) * s
            patches.setdefault("output_block_patch", []).append(skip_patch)
        options["patches"] = patches
        return args, {**kwargs, "transformer_options": options}

    # -- TrainableAdapter ---------------------------------------------------------------------

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        if self.control is None:
            raise RuntimeError("ControlNet parameters exist only after attach()")
        if not unet_lr:
            return []
        groups = [{"params": list(self.control.parameters()), "lr": unet_lr, "name": "controlnet"}]
        if self._decoder:
            groups.append({"params": list(self._decoder.values()), "lr": unet_lr, "name": "unet_decoder"})
        return groups

    def set_batch(self, batch: Batch) -> None:
        self._guides = batch_guides(batch, "ControlNet", "conditioning_data_dir, Fill50K source/, or in-graph guide images",
                                    ControlNetError)

    def train(self, mode: bool = True) -> None:
        self.training = mode
        if self.control is not None:
            self.control.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """core's cldm names; with sd_locked=False also the decoder as `unet.<name>`."""
        sd = {k: v.detach() for k, v in self.control.state_dict().items()}
        sd.update({"unet." + k: p.detach() for k, p in self._decoder.items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if self.control is None:
            raise RuntimeError("ControlNet weights can only be loaded after attach()")
        decoder = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
        self._load({k: v for k, v in sd.items() if not k.startswith("unet.")}, "the training state")
        if set(decoder) != set(self._decoder):
            raise ControlNetError("the training state's U-Net decoder does not match sd_locked: resume with the same sd_locked")
        with torch.no_grad():
            for k, p in self._decoder.items():
                p.copy_(decoder[k])

    def _load(self, sd: dict[str, torch.Tensor], source: str) -> None:
        load_exact(self.control.state_dict(), sd, f"{source} does not fit a ControlNet of this {self.family} model", ControlNetError)

    def metadata(self) -> dict[str, str]:
        architecture = "stable-diffusion-xl-v1-base" if self.family == "sdxl" else "stable-diffusion-v1"
        return {"ss_network_module": "controlnet", "modelspec.architecture": f"{architecture}/controlnet", "ss_sd_locked": str(self.sd_locked),
                "ss_only_mid_control": str(self.only_mid_control), "ss_control_strength": str(self.strength),
                "ss_guide_dropout": str(self.guide_dropout), "ss_base_model_family": self.family,
                "ss_controlnet_layout": self.layout}

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        meta = {**metadata, **self.metadata()}
        save_controlnet(path, self.control, dtype, meta, file_names(self.layout, self.control.state_dict(), self.unet_config))
        if self._decoder:
            save_unet(str(unet_file_for(path)), self.diffusion_model, dtype, meta)
