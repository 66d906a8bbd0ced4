"""Pose nodes: OpenPose and DWPose guides (IMAGE) plus the OpenPose JSON (POSE_KEYPOINT,
comfyui_controlnet_aux's layout: one dict per image) that pose editors and savers read."""
from comfy_api.latest import io

from ..preprocessors import weights as w
from ..preprocessors.pose.dwpose import BACKENDS, dwpose, load_dwpose
from ..preprocessors.pose.openpose import load_openpose, openpose
from .common import bchw_to_image, image_to_bchw
from .preprocessor_nodes import CATEGORY, _detect_input, _weight_dirs, _weight_path

PoseKeypoint = io.Custom("POSE_KEYPOINT")


def _file_input(name: str, spec: w.WeightSpec, what: str) -> io.Combo.Input:
    options = w.weight_choices([spec], _weight_dirs())
    return io.Combo.Input(name, options=options, default=options[0],
                          tooltip=f"{what} in models/preprocessors. The public one is {spec.name} ({spec.url}, "
                                  f"{spec.licence}); nothing is downloaded.")


def _switch(name: str, default: bool, what: str) -> io.Boolean.Input:
    return io.Boolean.Input(name, default=default, tooltip=f"Detect and draw {what}.")


def _check(files: dict[str, str | None]) -> bool | str:
    """A missing file fails the graph before anything runs (only the files in use)."""
    for choice in files.values():
        if choice is None:
            continue
        try:
            _weight_path(choice)
        except w.WeightFileMissing as e:
            return str(e)
    return True


def _outputs() -> list:
    return [io.Image.Output(display_name="pose"), PoseKeypoint.Output(display_name="pose_keypoint")]


class OpenPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_OpenPose", display_name="OpenPose Pose (LLLite Kit)", category=CATEGORY,
            description="OpenPose stick figures (body 18 keypoints, hands, face) drawn as ControlNet's openpose "
                        "models were trained, and the keypoints as OpenPose JSON. Weights: body_pose_model.pth, "
                        "hand_pose_model.pth, facenet.pth (lllyasviel/Annotators; CMU licence, non-commercial).",
            inputs=[io.Image.Input("image"),
                    _switch("include_body", True, "the body"), _switch("include_hands", False, "the hands"),
                    _switch("include_face", False, "the face"),
                    _file_input("body_weights", w.OPENPOSE_BODY, "Body network"),
                    _file_input("hand_weights", w.OPENPOSE_HAND, "Hand network (used when hands are on)"),
                    _file_input("face_weights", w.OPENPOSE_FACE, "Face network (used when the face is on)"),
                    _detect_input(512)],
            outputs=_outputs())

    @classmethod
    def validate_inputs(cls, include_hands=False, include_face=False, body_weights=None, hand_weights=None,
                        face_weights=None, **_) -> bool | str:
        return _check({"body": body_weights, "hand": hand_weights if include_hands else None,
                       "face": face_weights if include_face else None})

    @classmethod
    def execute(cls, image, include_body, include_hands, include_face, body_weights, hand_weights, face_weights,
                detect_resolution=512) -> io.NodeOutput:
        patchers = load_openpose(_weight_path(body_weights),
                                 _weight_path(hand_weights) if include_hands else None,
                                 _weight_path(face_weights) if include_face else None)
        guides, poses = openpose(patchers, image_to_bchw(image), detect_resolution, include_body, include_hands,
                                 include_face)
        return io.NodeOutput(bchw_to_image(guides), poses)


class DWPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_DWPose", display_name="DWPose Whole-Body Pose (LLLite Kit)", category=CATEGORY,
            description="DWPose (YOLOX person boxes + RTMPose-l, 133 keypoints) drawn as OpenPose stick figures "
                        "with hands and face, for openpose ControlNets, and the keypoints as OpenPose JSON. Reads "
                        "yolox_l.onnx and dw-ll_ucoco_384.onnx (yzd-v/DWPose) and runs them on torch; onnxruntime "
                        "is optional.",
            inputs=[io.Image.Input("image"),
                    _switch("include_body", True, "the body"), _switch("include_hands", True, "the hands"),
                    _switch("include_face", True, "the face"),
                    _file_input("bbox_detector", w.DWPOSE_DETECTOR, "Person detector (ONNX)"),
                    _file_input("pose_estimator", w.DWPOSE_ESTIMATOR, "Whole-body pose estimator (ONNX)"),
                    io.Combo.Input("backend", options=list(BACKENDS), default="torch", advanced=True,
                                   tooltip="torch runs the ONNX graphs on ComfyUI's device (no extra package; on the CPU "
                                           "about a fifth faster than onnxruntime, using about 0.8 GB more "
                                           "memory); onnxruntime runs them with onnxruntime if it is installed."),
                    _detect_input(512)],
            outputs=_outputs())

    @classmethod
    def validate_inputs(cls, bbox_detector=None, pose_estimator=None, **_) -> bool | str:
        return _check({"detector": bbox_detector, "estimator": pose_estimator})

    @classmethod
    def execute(cls, image, include_body, include_hands, include_face, bbox_detector, pose_estimator,
                backend="torch", detect_resolution=512) -> io.NodeOutput:
        models = load_dwpose(_weight_path(bbox_detector), _weight_path(pose_estimator), backend)
        guides, poses = dwpose(models, image_to_bchw(image), detect_resolution, include_body, include_hands,
                               include_face)
        return io.NodeOutput(bchw_to_image(guides), poses)


NODES = [OpenPose, DWPose]
