"""sd-scripts' block-wise learning rates for a full SDXL U-Net (sdxl_train.py --block_lr): 23
values, one per block of the original layout."""
SDXL_BLOCKS = 23  # time/label embedding, input_blocks 0-8, middle_block 0-2, output_blocks 0-8, out


def sdxl_block_index(name: str) -> int:
    """The block_lr index of a U-Net parameter, as sdxl_train.get_block_params_to_optimize numbers them."""
    head, _, rest = name.partition(".")
    if head in ("time_embed", "label_emb"):
        return 0
    if head == "input_blocks":
        return 1 + int(rest.split(".")[0])
    if head == "middle_block":
        return 10 + int(rest.split(".")[0])
    if head == "output_blocks":
        return 13 + int(rest.split(".")[0])
    if head == "out":
        return 22
    raise ValueError(f"U-Net parameter {name} belongs to no SDXL block")


def parse_block_lr(value) -> list[float] | None:
    """"1e-6,1e-6,..." or a list -> 23 floats; empty -> None."""
    if value is None or value == "" or value == []:
        return None
    values = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    if len(values) != SDXL_BLOCKS:
        raise ValueError(f"block_lr needs {SDXL_BLOCKS} values for SDXL (embedding, 9 input blocks, 3 middle, "
                         f"9 output blocks, out), got {len(values)}")
    if any(v < 0 for v in values):
        raise ValueError("block_lr values must be >= 0 (0 freezes a block)")
    return values
