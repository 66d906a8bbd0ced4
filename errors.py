"""How the pack's exception types read in ComfyUI's error panel.

ComfyUI shows an exception's type as `module.QualName`; for a custom node pack the module is
its folder path (`/abs/path/custom_nodes/comfyui-lllite-kit.preprocessors.weights`), which
pushes the message below the fold. Our user-facing types are shown as `LLLiteKit.<Name>`.
"""
PANEL_PREFIX = "LLLiteKit"


def user_error(cls: type) -> type:
    """Class decorator: `LLLiteKit.<Name>` in ComfyUI's panel, logs and tracebacks."""
    cls.__module__ = PANEL_PREFIX
    return cls
