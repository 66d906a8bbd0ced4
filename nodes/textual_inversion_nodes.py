"""Train a Textual Inversion embedding in a graph (SD1.5, SDXL with both encoders). A form over
training.config.TrainConfig plus the embedding's own options; everything it does is
training.textual_inversion.train_textual_inversion."""
from comfy_api.latest import io, ui

from ..training.comfy_bridge import latent_cache_dir, model_source_name
from ..training.config import config_from_dict
from ..training.loss_curve import draw_loss_curve
from ..training.textual_inversion import TEMPLATES, TextualInversionOptions, train_textual_inversion
from .training_form import (NodeProgress, extra_options_input, file_name_in, head_inputs, last_samples,
                            optimisation_inputs, parse_extra_options, plan_run, resolve_path, saved_files_text,
                            saving_inputs)

CATEGORY = "LLLite Kit/training"
EMBEDDING_FOLDERS = ("embeddings",)


def embeddings_dir() -> str:
    """ComfyUI's (first) embeddings folder, where `embedding:name` in a prompt finds the file."""
    import folder_paths

    return folder_paths.get_folder_paths("embeddings")[0]


class TrainTextualInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_TrainTextualInversion",
            display_name="Train Textual Inversion (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Trains new token vectors (an embedding) for SD1.5 or SDXL (both text encoders) into "
                        "models/embeddings; use it in any prompt as embedding:<name>. Captions name the token string "
                        "(or a template set replaces them). Only the vectors train; saves every N steps with a "
                        "resumable state; Cancel keeps the last saved file.",
            inputs=[
                *head_inputs("my_embedding", "models/embeddings", 1000, 5e-3),
                io.String.Input("token_string", default="sks",
                                tooltip="The word in the captions (and sample prompts) that the embedding stands for."),
                io.String.Input("init_word", default="",
                                tooltip="Word(s) whose token embeddings start the vectors (vector i = token i mod count); "
                                        "empty: random."),
                io.Int.Input("num_vectors_per_token", default=1, min=1, max=75),
                io.Combo.Input("caption_templates", options=list(TEMPLATES), default="none",
                               tooltip="object / style: every caption becomes a random sd-scripts template "
                                       "('a photo of a {token}' ...); none: the dataset's captions."),
                *optimisation_inputs("TI is usually trained with AdamW at 5e-3 or so."),
                *saving_inputs(),
                extra_options_input('lr_scheduler_num_cycles = 3 or min_snr_gamma = 5'),
                io.String.Input("start_from", default="", optional=True,
                                tooltip="An embedding file (models/embeddings name or path) to continue from."),
            ],
            outputs=[
                io.String.Output(display_name="embedding_name", tooltip="Write embedding:<this> in a prompt."),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="samples"),
                io.String.Output(display_name="saved_files", tooltip="Every file this run wrote and kept, one per line."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, if_exists, extra_options, token_string, init_word,
                num_vectors_per_token, caption_templates, start_from="", **form) -> io.NodeOutput:
        options = TextualInversionOptions(token_string.strip(), init_word, num_vectors_per_token, caption_templates,
                                          _embedding_path(start_from) if start_from.strip() else None)
        extra, dataset = parse_extra_options(extra_options, dataset, "Train Textual Inversion node")
        cfg = config_from_dict({**form, **extra, "output_name": output_name}, "Train Textual Inversion node")
        cfg, out_dir = plan_run(cfg, embeddings_dir(), if_exists, dataset)
        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)
        result = train_textual_inversion(cfg, model, clip, vae, dataset, options, output_dir=out_dir,
                                         model_name=model_source_name(model), hooks=progress.hooks(),
                                         latent_cache_dir=latent_cache_dir())
        curve = draw_loss_curve({"loss": result.losses})
        name = file_name_in(result.final_path, EMBEDDING_FOLDERS).removesuffix(".safetensors")
        return io.NodeOutput(name, curve, last_samples(result), saved_files_text(result.saved, EMBEDDING_FOLDERS),
                             ui=ui.PreviewImage(curve, cls=cls))


def _embedding_path(value: str) -> str:
    """A name in the embeddings folders (with or without .safetensors), else a readable path."""
    import folder_paths

    value = value.strip()
    found = folder_paths.get_full_path("embeddings", value if value.endswith(".safetensors") else value + ".safetensors")
    return found or str(resolve_path(value, "start_from embedding"))


NODES = [TrainTextualInversion]
