"""What ComfyUI model is this: the one answer LoRA key names, LLLite layouts and the trainer
build on, so they cannot disagree. Each caller refuses the families it does not support
itself (LoRA: SDXL/SD1.x; LLLite: its layouts; training: plain SD1.x/SD2.x/SDXL U-Nets).
"""


def model_family(model) -> str | None:
    """"sdxl", "sd15" (SD1.x), "sd2" (SD2.x) or "anima" for a ComfyUI model config, BaseModel or MODEL
    (ModelPatcher); None for every other model.

    The config's class is ComfyUI's detection from the checkpoint's keys, so the family is the
    U-Net's block names and the text encoders. Subclasses are variants with those names
    (SSD-1B, KOALA, instruct-pix2pix, unCLIP, x4 upscaler, Lotus); a caller that needs the
    plain text-to-image model checks for it itself."""
    # imported here: lllite/ uses this module and stays importable without ComfyUI on the path
    import comfy.supported_models as sm
    from comfy.supported_models_base import BASE

    config = model
    if not isinstance(config, BASE):  # a config answers every unknown attribute with None (and a warning)
        config = getattr(getattr(model, "model", model), "model_config", None)  # ModelPatcher -> BaseModel -> config
    for family, cls in (("sdxl", sm.SDXL), ("sd15", sm.SD15), ("sd2", sm.SD20), ("anima", sm.Anima)):
        if isinstance(config, cls):
            return family
    return None
