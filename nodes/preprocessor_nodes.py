"""Preprocessor nodes: IMAGE in, guide IMAGE out (white structure on black)."""
from comfy_api.latest import io

from ..preprocessors.canny import canny
from .common import bchw_to_image, image_to_bchw

CATEGORY = "LLLite Kit/preprocessors"


def _device():
    import comfy.model_management as mm

    return mm.get_torch_device()


class CannyEdges(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_Canny",
            display_name="Canny Edges (LLLite Kit)",
            category=CATEGORY,
            description="White Canny edges on black, the guide image Canny LLLite/ControlNet models expect. "
            "Thresholds use OpenCV's 0-255 scale, as in every tutorial (100/200).",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("low_threshold", default=100, min=0, max=255, step=1,
                             tooltip="Edges weaker than this are dropped (OpenCV scale 0-255)."),
                io.Int.Input("high_threshold", default=200, min=0, max=255, step=1,
                             tooltip="Edges stronger than this always start a line; weaker ones join only if connected."),
                io.Boolean.Input("l2_gradient", default=False,
                                 tooltip="Use the exact gradient magnitude (sqrt) instead of |gx|+|gy|."),
            ],
            outputs=[io.Image.Output(display_name="edges")],
        )

    @classmethod
    def execute(cls, image, low_threshold, high_threshold, l2_gradient) -> io.NodeOutput:
        x = image_to_bchw(image).to(_device())
        return io.NodeOutput(bchw_to_image(canny(x, low_threshold, high_threshold, l2_gradient)))


NODES = [CannyEdges]
