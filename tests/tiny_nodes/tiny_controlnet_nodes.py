"""Test-only node: a tiny SD1.5 / SDXL checkpoint whose U-Net has 64 channels per attention head,
what core's ControlNet loader assumes for a file (controlnet_testing.build_model). The plain tiny
checkpoints have 16, so ControlNet creation refuses them; example workflows that make or train
a ControlNet get this one (workflow_fixtures)."""
from comfy_api.latest import io

import tiny_models


class TinyControlNetCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKitTest_TinyControlNetCheckpoint",
            category="LLLite Kit/testing",
            inputs=[
                io.Combo.Input("family", options=list(tiny_models.FAMILIES)),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, family, seed) -> io.NodeOutput:
        from controlnet_testing import build_model  # tests/ is on sys.path wherever workflows run on tiny models

        return io.NodeOutput(build_model(family, seed), tiny_models.build_clip(family, seed), tiny_models.build_vae(seed))
