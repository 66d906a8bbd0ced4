"""ControlNet-LLLite nodes: load a kohya-format file, apply it to a MODEL."""
import folder_paths
from comfy_api.latest import io

from ..lllite.guide import RESIZE_MODES
from ..lllite.patch import apply_lllite
from ..lllite.weights import read_lllite
from .common import image_to_bchw

CATEGORY = "LLLite Kit/LLLite"
LLLite = io.Custom("LLLITE")
# Users keep LLLite files in core's controlnet folder (kohya's README says so) or in ours;
# Anima LLLites in core's model_patches (where its ModelPatchLoader reads them).
FOLDERS = ("lllite", "controlnet", "model_patches")


KOHYA_RELEASES = "https://huggingface.co/kohya-ss/controlnet-lllite"
KOHYA_ANIMA_RELEASES = "https://huggingface.co/kohya-ss/Anima-LLLite"
# The one choice offered while no file is present, so the list itself says what to do.
NO_FILE = "no LLLite file found: put one in models/lllite"


def lllite_files() -> list[str]:
    names = set()
    for folder in FOLDERS:
        names.update(n for n in folder_paths.get_filename_list(folder) if n.endswith(".safetensors"))
    return sorted(names) or [NO_FILE]


def lllite_path(name: str) -> str:
    for folder in FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    searched = "; ".join(p for f in FOLDERS for p in folder_paths.get_folder_paths(f))
    what = "No LLLite file was chosen" if name == NO_FILE else f"LLLite file '{name}' not found"
    raise FileNotFoundError(f"{what}: put it in models/lllite, models/controlnet or models/model_patches ({searched}). "
                            f"kohya's released SDXL files are published at {KOHYA_RELEASES}, the Anima ones at "
                            f"{KOHYA_ANIMA_RELEASES}; files you train land in models/lllite.")


class LoadLLLite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_LoadLLLite",
            display_name="Load ControlNet-LLLite (LLLite Kit)",
            category=CATEGORY,
            description="Loads a kohya-format ControlNet-LLLite file (e.g. controllllite_v01032064e_sdxl_canny_anime, "
            "or an Anima LLLite v2 such as anima-lllite-any-test-like-v2) from models/controlnet, models/lllite or "
            "models/model_patches. Other kinds of files get an error saying what they are.",
            inputs=[io.Combo.Input("lllite_name", options=lllite_files())],
            outputs=[LLLite.Output(display_name="lllite")],
        )

    @classmethod
    def validate_inputs(cls, lllite_name=None) -> bool | str:
        """An absent file fails the graph before anything runs, saying where it goes (any name
        passes the list check here: a saved workflow names files this machine may not have)."""
        if lllite_name is None:  # linked from another node: checked when it runs
            return True
        try:
            lllite_path(lllite_name)
        except FileNotFoundError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, lllite_name) -> io.NodeOutput:
        return io.NodeOutput(read_lllite(lllite_path(lllite_name), lllite_name))


class ApplyLLLite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_ApplyLLLite",
            display_name="Apply ControlNet-LLLite (LLLite Kit)",
            category=CATEGORY,
            description="Patches the model so the LLLite steers generation toward the guide image. Chain several "
            "to combine controls: each acts on the original attention inputs with its own strength and range.",
            inputs=[
                io.Model.Input("model"),
                LLLite.Input("lllite"),
                io.Image.Input("image", tooltip="Guide image (e.g. Canny edges); resized to the generated picture's size."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule (by noise level) where the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule (by noise level) where the control stops."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop",
                               tooltip="How a guide of another size or aspect is fitted: crop the overhang, "
                               "stretch, or pad with black."),
                io.Mask.Input("mask", optional=True, tooltip="Where the control acts (1) and where not (0). For an Anima "
                              "inpainting LLLite: the region to repaint (its fourth guide channel)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, lllite, image, strength, start_percent, end_percent, resize_mode, mask=None) -> io.NodeOutput:
        return io.NodeOutput(apply_lllite(model, lllite, image_to_bchw(image), strength, start_percent,
                                          end_percent, resize_mode, mask))


NODES = [LoadLLLite, ApplyLLLite]
