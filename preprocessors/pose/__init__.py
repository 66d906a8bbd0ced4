"""Pose guides: OpenPose (body, hands, face) and DWPose (whole body) keypoints, drawn the way
ControlNet's openpose models were trained, plus the OpenPose JSON that pose editors read."""
