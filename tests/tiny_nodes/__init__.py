"""Test-only node pack: tiny SDXL / SD1.5 checkpoints for graph and server tests.

Loaded by ComfyUI like any custom node pack (the server test links it into custom_nodes);
example workflows have their checkpoint loaders swapped for this node.
"""
import sys
import os

from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models  # noqa: E402  (plain module so the server and pytest share one copy)
import tiny_anima_nodes  # noqa: E402
import tiny_controlnet_nodes  # noqa: E402


class TinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKitTest_TinyCheckpoint",
            category="LLLite Kit/testing",
            inputs=[
                io.Combo.Input("family", options=list(tiny_models.FAMILIES)),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, family, seed) -> io.NodeOutput:
        return io.NodeOutput(*tiny_models.build_checkpoint(family, seed))


class TinyTestExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyCheckpoint, tiny_anima_nodes.TinyAnima, tiny_controlnet_nodes.TinyControlNetCheckpoint]


async def comfy_entrypoint():
    return TinyTestExtension()
