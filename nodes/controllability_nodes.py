"""Measure how closely generated pictures follow their guide: the guide's preprocessor runs on
each picture and its map is compared with the guide (training/controllability)."""
from comfy_api.latest import io, ui

from ..errors import user_error
from ..preprocessors import weights as w
from ..training.controllability.maps import KINDS, MapSettings, result_maps
from ..training.controllability.measure import measure
from ..training.controllability.pose import POSE_MAPS, detect_poses, guide_parts, measure_pose
from .common import bchw_to_image, image_to_bchw
from .pose_nodes import PoseKeypoint
from .preprocessor_nodes import _weight_dirs, _weight_path

CATEGORY = "LLLite Kit/controllability"
NO_WEIGHTS = "(none: Canny and standard lineart need no weights)"


@user_error
class MeasurementError(ValueError):
    pass


class MeasureControllability(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_MeasureControllability",
            display_name="Measure Controllability (LLLite Kit)",
            category=CATEGORY,
            is_output_node=True,
            description="Does the picture follow its guide? Runs the guide's preprocessor (same settings) on each "
                        "generated picture and compares the two maps: edges by F1 within a pixel tolerance (and "
                        "SSIM), depth by RMSE after scale-and-shift alignment (and correlation), normals by mean "
                        "angular error, segmentation by mIoU, pose by PCK of the keypoints (connect the pose node's "
                        "POSE_KEYPOINT output to guide_keypoints). See docs/controllability.md for the definitions.",
            inputs=[
                io.Image.Input("images", tooltip="The generated pictures."),
                io.Image.Input("guides", tooltip="The guide images they were made with: one for all, or one per picture."),
                io.Combo.Input("map", options=[*KINDS, *POSE_MAPS], default="canny",
                               tooltip="Which preprocessor made the guides; it runs again on the pictures."),
                io.Combo.Input("weights", options=[NO_WEIGHTS, *w.available_weights(_weight_dirs())],
                               tooltip="The detector's weight file in models/preprocessors (HED, PiDiNet, realistic "
                                       "lineart, Depth Anything V2, MiDaS, UperNet; openpose: the body network "
                                       "body_pose_model.pth; dwpose: the pose estimator dw-ll_ucoco_384.onnx), the "
                                       "one that made the guides."),
                io.Float.Input("tolerance_px", default=2.0, min=0.0, max=64.0, step=0.5,
                               tooltip="Edges: a pixel counts as matched when an edge of the other map lies within "
                                       "this distance (0 = pixel-exact)."),
                io.Float.Input("edge_threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Edges: grey level above which a soft map (HED, lineart) counts as an edge."),
                io.Int.Input("low_threshold", default=100, min=0, max=255, tooltip="Canny low threshold of the guides."),
                io.Int.Input("high_threshold", default=200, min=0, max=255, tooltip="Canny high threshold of the guides."),
                io.Int.Input("detect_resolution", default=0, min=0, max=8192,
                             tooltip="The guides' detection resolution; 0 = the preprocessor's default."),
                io.Boolean.Input("safe", default=False, tooltip="HED / PiDiNet 'safe' setting of the guides."),
                io.Float.Input("normal_strength", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Normals: the Normal Map from Depth strength of the guides."),
                io.Float.Input("normal_background", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Normals: the Normal Map from Depth background threshold of the guides."),
                PoseKeypoint.Input("guide_keypoints", optional=True,
                                   tooltip="Pose maps: the POSE_KEYPOINT output of the pose node that made the guides "
                                           "(their keypoints; the drawn guides alone do not give them back)."),
                io.Combo.Input("person_detector", options=w.weight_choices([w.DWPOSE_DETECTOR], _weight_dirs()),
                               optional=True, tooltip="dwpose: the person detector of the guides (yolox_l.onnx)."),
                io.Float.Input("pck_alpha", default=0.1, min=0.01, max=1.0, step=0.01, optional=True,
                               tooltip="Pose: a keypoint is correct within this share of the person's bounding-box "
                                       "longer side (PCK@0.1 by default)."),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip="Mean of the headline metric (F1, depth RMSE, angle, "
                                                              "mIoU or PCK)."),
                io.String.Output(display_name="report", tooltip="Every metric per picture, the means, and (one guide per "
                                 "picture) the chance level: the pictures against the other pictures' guides."),
                io.Image.Output(display_name="side_by_side", tooltip="guide | map of the picture | difference"),
                io.Image.Output(display_name="result_maps", tooltip="The preprocessor's maps of the pictures."),
            ],
        )

    @classmethod
    def validate_inputs(cls, weights=None, map=None, person_detector=None) -> bool | str:
        """An absent weight file fails the graph before anything runs (any name passes the
        list check: saved workflows name files this machine may not have)."""
        files = [weights] + ([person_detector or w.DWPOSE_DETECTOR.name] if map == "dwpose" else [])
        for choice in files:
            if choice is None or choice == NO_WEIGHTS:
                continue
            try:
                _weight_path(choice)
            except w.WeightFileMissing as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, images, guides, map, weights, tolerance_px, edge_threshold, low_threshold, high_threshold,
                detect_resolution, safe, normal_strength, normal_background, guide_keypoints=None,
                person_detector=None, pck_alpha=0.1) -> io.NodeOutput:
        needs_weights = map in POSE_MAPS or KINDS[map].needs_weights
        if needs_weights and weights == NO_WEIGHTS:
            raise MeasurementError(f"the '{map}' map runs a detector: choose its weight file (the one that made the guides)")
        path = _weight_path(weights) if needs_weights else None
        try:
            if map in POSE_MAPS:
                maps, m = cls._pose(map, images, guides, path, person_detector, detect_resolution, guide_keypoints,
                                    pck_alpha)
            else:
                settings = MapSettings(low_threshold, high_threshold, detect_resolution, safe, normal_strength,
                                       normal_background, path)
                maps = result_maps(map, image_to_bchw(images), settings)
                m = measure(KINDS[map].family, maps, image_to_bchw(guides).to(maps.device), tolerance_px,
                            edge_threshold)
        except ValueError as e:
            raise MeasurementError(str(e)) from e
        better = "higher" if m.higher_is_better else "lower"
        report = f"{map} ({m.primary}, {better} is better)\n{m.text()}"
        return io.NodeOutput(m.mean[m.primary], report, bchw_to_image(m.side_by_side), bchw_to_image(maps),
                             ui=ui.PreviewText(report))


    @staticmethod
    def _pose(map, images, guides, path, person_detector, detect_resolution, guide_keypoints, alpha):
        """The pose node's detector on the pictures, its keypoints against the guide's."""
        if not guide_keypoints:
            raise MeasurementError(f"the '{map}' map compares keypoints: connect the POSE_KEYPOINT output of the pose "
                                   "node that made the guides to guide_keypoints")
        poses = guide_keypoints if isinstance(guide_keypoints, list) else [guide_keypoints]
        files = [path] if map == "openpose" else [_weight_path(person_detector or w.DWPOSE_DETECTOR.name), path]
        hands, face = guide_parts(poses)
        maps, found = detect_poses(map, image_to_bchw(images), files, detect_resolution, hands, face)
        return maps, measure_pose(image_to_bchw(guides), maps, poses, found, alpha)


NODES = [MeasureControllability]
