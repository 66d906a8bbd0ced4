"""Textual Inversion as a TrainableAdapter (training/adapter.py): the only trained parameters
are the new token vectors (one [n, width] tensor per text encoder). The text encoders run with
gradients through their input embeddings (trains_text_encoders: no text caching) but their
weights stay frozen; the vectors reach them through the TextConditioner's `embeddings`, the
same path `embedding:name` takes in a ComfyUI prompt."""
import torch

from ..data.batch import Batch
from .embedding import file_tensors, memory_vectors, save_embedding

ARCHITECTURE = {"sdxl": "stable-diffusion-xl-v1-base/textual-inversion", "sd15": "stable-diffusion-v1/textual-inversion",
                "sd2": "stable-diffusion-v2/textual-inversion"}


class TextualInversionAdapter:
    kind = "textual_inversion"
    trains_text_encoders = True

    def __init__(self, vectors: dict[str, torch.Tensor], family: str, token_string: str):
        """vectors: the start, by embedding key; the parameters made from them are what the
        TextConditioner's `embeddings` must hold (see TextualInversionAdapter.embeddings)."""
        self.family = family
        self.token_string = token_string
        # fp32 on the CPU: a few thousand numbers; ComfyUI moves them to the encoder's device per call
        self.vectors = {k: torch.nn.Parameter(v.detach().float().cpu().clone()) for k, v in vectors.items()}

    def embeddings(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        return {name: dict(self.vectors)}

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        """Nothing to insert: the TextConditioner already resolves the name to the vectors."""

    def detach(self) -> None:
        pass

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        lr = unet_lr if text_encoder_lr is None else text_encoder_lr
        return [{"params": list(self.vectors.values()), "lr": lr, "name": "embedding"}] if lr else []

    def set_batch(self, batch: Batch) -> None:
        pass

    def train(self, mode: bool = True) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in file_tensors(self.vectors, self.family).items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        loaded = memory_vectors(sd, list(self.vectors), "embedding state")
        with torch.no_grad():
            for k, v in loaded.items():
                if v.shape != self.vectors[k].shape:
                    raise ValueError(f"embedding {k}: shape {tuple(v.shape)} does not fit {tuple(self.vectors[k].shape)} "
                                     "(num_vectors_per_token and the model must match)")
                self.vectors[k].copy_(v.to(self.vectors[k].dtype))

    def metadata(self) -> dict[str, str]:
        n = next(iter(self.vectors.values())).shape[0]
        return {"modelspec.architecture": ARCHITECTURE[self.family], "ss_token_string": self.token_string,
                "ss_num_vectors_per_token": str(n)}

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        save_embedding(path, self.vectors, self.family, dtype, {**metadata, **self.metadata()})
