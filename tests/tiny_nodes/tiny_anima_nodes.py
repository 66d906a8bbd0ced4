"""Test-only node: the tiny Anima MODEL / CLIP / VAE (tiny_anima.py) for graph and workflow tests."""
from comfy_api.latest import io

import tiny_anima


class TinyAnima(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKitTest_TinyAnima",
            category="LLLite Kit/testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        return io.NodeOutput(*tiny_anima.build_anima_checkpoint(seed))
