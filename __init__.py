"""ComfyUI entry point of LLLite Kit: registers the pack's nodes through the V3 API."""
# pytest imports this file outside any package when it walks the checkout (a folder name
# like "ci-check" is no package name); only a package import registers the nodes.
if __package__:
    from .nodes.extension import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
