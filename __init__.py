"""ComfyUI entry point of LLLite Kit: registers the pack's nodes through the V3 API."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_CLASSES
from .nodes.model_folders import register_model_folders


class LLLiteKitExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


async def comfy_entrypoint() -> LLLiteKitExtension:
    return LLLiteKitExtension()
