"""Registers the pack and the test-only tiny-model pack the way ComfyUI's loader does."""
import asyncio
import sys

import nodes


def _register(extension) -> None:
    async def load():
        await extension.on_load()
        for node_cls in await extension.get_node_list():
            schema = node_cls.GET_SCHEMA()
            nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
            if schema.display_name is not None:
                nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name

    asyncio.run(load())


def register_test_packs() -> None:
    import tiny_nodes  # tests/tiny_nodes is on sys.path (conftest)

    pack = sys.modules["lllite_kit"]
    _register(asyncio.run(pack.comfy_entrypoint()))
    _register(asyncio.run(tiny_nodes.comfy_entrypoint()))
