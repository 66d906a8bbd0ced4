"""The pack's V3 extension: model folders on load, the node list."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import NODE_CLASSES
from .model_folders import register_model_folders


class LLLiteKitExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


async def comfy_entrypoint() -> LLLiteKitExtension:
    return LLLiteKitExtension()
