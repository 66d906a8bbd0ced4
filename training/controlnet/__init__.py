"""ControlNet: made from a base U-Net (lllyasviel's tool_add_control), trained on the one engine,
moved to another base (tool_transfer_control), applied with A1111's control modes. The network
is always core's comfy.cldm.cldm.ControlNet; files use lllyasviel's `control_model.*` layout."""
