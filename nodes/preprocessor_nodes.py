"""Preprocessor nodes: IMAGE in, guide IMAGE out at the input's size (white structure on
black, depth near = white, normals in rendering colours)."""
from comfy_api.latest import io

from ..preprocessors import weights as w
from ..preprocessors.blur_tile import blur_guide, tile_guide
from ..preprocessors.canny import canny
from ..preprocessors.depth_anything import NATIVE_RESOLUTION, depth_anything, load_depth_anything
from ..preprocessors.depth_anything import VERSIONS as DEPTH_ANYTHING_VERSIONS
from ..preprocessors.hed import hed_edges, load_hed
from ..preprocessors.image_ops import invert
from ..preprocessors.lineart_anime import lineart_anime, load_lineart_anime
from ..preprocessors.lineart_manga import lineart_manga, load_lineart_manga
from ..preprocessors.lineart_realistic import lineart_realistic, load_lineart
from ..preprocessors.lineart_standard import lineart_standard
from ..preprocessors.midas import DEFAULT_RESOLUTION as DEFAULT_MIDAS_RESOLUTION
from ..preprocessors.midas import load_midas, midas_depth
from ..preprocessors.mlsd import load_mlsd, mlsd_lines
from ..preprocessors.normal_map import normals_from_depth
from ..preprocessors.normal_bae import DEFAULT_RESOLUTION as DEFAULT_BAE_RESOLUTION
from ..preprocessors.normal_bae import load_normal_bae, normal_bae
from ..preprocessors.pidinet import load_pidinet, pidinet_edges
from ..preprocessors.resolution import detect_then_restore
from ..preprocessors.scribble import scribble_xdog
from ..preprocessors.segmentation import load_segmenter, segment
from ..preprocessors.threshold import binary_threshold
from .common import bchw_to_image, image_to_bchw
from .model_folders import register_model_folders

CATEGORY = "LLLite Kit/preprocessors"
DETECT_MAX = 8192


def _device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def _weight_dirs() -> list[str]:
    import folder_paths

    register_model_folders()
    return folder_paths.get_folder_paths("preprocessors")


def _weights_input(*defaults: w.WeightSpec) -> io.Combo.Input:
    options = w.weight_choices(list(defaults), _weight_dirs())
    return io.Combo.Input(
        "weights", options=options, default=options[0],
        tooltip=f"Weight file in models/preprocessors. The public one is {defaults[0].name} "
                f"({defaults[0].url}, {defaults[0].licence}); nothing is downloaded.")


def _weight_path(choice: str) -> str:
    return w.locate(w.name_from_choice(choice), _weight_dirs())


class _LearnedNode(io.ComfyNode):
    """A node that reads a weight file: an absent file fails the graph before anything runs.
    Any name is accepted here (saved workflows keep a file's name, with or without the
    missing label), so the user sees where to put the file, not "value not in list"."""

    @classmethod
    def validate_inputs(cls, weights=None) -> bool | str:
        if weights is None:  # linked from another node: checked when it runs
            return True
        try:
            _weight_path(weights)
        except w.WeightFileMissing as e:
            return str(e)
        return True


def _detect_input(default: int) -> io.Int.Input:
    return io.Int.Input(
        "detect_resolution", default=default, min=0, max=DETECT_MAX, step=1, optional=True, advanced=True,
        tooltip="Short side the detector works at (detail level); 0 = the image's own size. "
                "The output is always the input image's size.")


def _schema(node_id: str, name: str, description: str, inputs: list, output: str = "map") -> io.Schema:
    return io.Schema(node_id=f"LLLiteKit_{node_id}", display_name=f"{name} (LLLite Kit)", category=CATEGORY,
                     description=description, inputs=[io.Image.Input("image"), *inputs],
                     outputs=[io.Image.Output(display_name=output)])


def _classical(fn, image, detect_resolution: int = 0, binary: bool = False) -> io.NodeOutput:
    x = image_to_bchw(image).to(_device())
    return io.NodeOutput(bchw_to_image(detect_then_restore(fn, x, detect_resolution, binary=binary)))


class CannyEdges(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("Canny", "Canny Edges",
                       "White Canny edges on black, the guide image Canny LLLite/ControlNet models expect. "
                       "Thresholds use OpenCV's 0-255 scale, as in every tutorial (100/200).",
                       [io.Int.Input("low_threshold", default=100, min=0, max=255, step=1,
                                     tooltip="Edges weaker than this are dropped (OpenCV scale 0-255)."),
                        io.Int.Input("high_threshold", default=200, min=0, max=255, step=1,
                                     tooltip="Edges stronger than this always start a line; weaker ones join only if connected."),
                        io.Boolean.Input("l2_gradient", default=False,
                                         tooltip="Use the exact gradient magnitude (sqrt) instead of |gx|+|gy|."),
                        _detect_input(0)], output="edges")

    @classmethod
    def execute(cls, image, low_threshold, high_threshold, l2_gradient, detect_resolution=0) -> io.NodeOutput:
        return _classical(lambda x: canny(x, low_threshold, high_threshold, l2_gradient), image,
                          detect_resolution, binary=True)


class LineartStandard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("LineartStandard", "Standard Lineart",
                       "Classical lineart (no weights): pixels darker than their blurred surroundings, "
                       "white lines on black.",
                       [io.Float.Input("gaussian_sigma", default=6.0, min=0.1, max=64.0, step=0.1,
                                       tooltip="Blur radius the local brightness is measured over, in pixels."),
                        io.Int.Input("intensity_threshold", default=8, min=0, max=255, step=1,
                                     tooltip="Darkening (0-255) below which a pixel does not count as a line "
                                             "when the line strength is normalised."),
                        _detect_input(0)])

    @classmethod
    def execute(cls, image, gaussian_sigma, intensity_threshold, detect_resolution=0) -> io.NodeOutput:
        return _classical(lambda x: lineart_standard(x, gaussian_sigma, intensity_threshold), image, detect_resolution)


class ScribbleXDoG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("ScribbleXDoG", "Scribble (XDoG)",
                       "Scribble guide from a difference of Gaussians (no weights): bold white strokes on black.",
                       [io.Int.Input("threshold", default=32, min=1, max=255, step=1,
                                     tooltip="Higher keeps only strong strokes (0-255 scale)."),
                        _detect_input(0)])

    @classmethod
    def execute(cls, image, threshold, detect_resolution=0) -> io.NodeOutput:
        return _classical(lambda x: scribble_xdog(x, threshold), image, detect_resolution, binary=True)


class BinaryThreshold(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("BinaryThreshold", "Binary Threshold",
                       "White where the grey level is above the threshold, black elsewhere.",
                       [io.Int.Input("threshold", default=0, min=0, max=255, step=1,
                                     tooltip="Grey level 1-254 (0-255 scale); 0 picks Otsu's threshold per image.")])

    @classmethod
    def execute(cls, image, threshold) -> io.NodeOutput:
        return _classical(lambda x: binary_threshold(x, threshold), image)


class InvertImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("Invert", "Invert Guide",
                       "Negative of the picture: turns black lines on white (drawings, scans) into the white "
                       "lines on black that line models expect, and back.", [])

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        return _classical(invert, image)


class TileGuide(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("Tile", "Tile Guide",
                       "The picture with fine detail removed (shrunk and enlarged back), for tile models.",
                       [io.Int.Input("pyramid_levels", default=3, min=0, max=8, step=1,
                                     tooltip="The picture is shrunk by 2^levels before being enlarged back.")])

    @classmethod
    def execute(cls, image, pyramid_levels) -> io.NodeOutput:
        return _classical(lambda x: tile_guide(x, pyramid_levels), image)


class BlurGuide(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("Blur", "Blur Guide", "Gaussian-blurred picture, for blur / tile colour-fix models.",
                       [io.Float.Input("sigma", default=5.0, min=0.0, max=64.0, step=0.1,
                                       tooltip="Blur radius (Gaussian sigma) in pixels.")])

    @classmethod
    def execute(cls, image, sigma) -> io.NodeOutput:
        return _classical(lambda x: blur_guide(x, sigma), image)


_SAFE_TIP = "Quantise the soft edges to a few levels so faint texture does not read as edges."
_SCRIBBLE_TIP = "Turn the soft edges into bold binary strokes (the 'fake scribble' guide)."


class HEDSoftEdges(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("HED", "HED Soft Edges",
                       "Soft edges from HED (ControlNetHED.pth), for softedge/HED models.",
                       [_weights_input(w.HED), io.Boolean.Input("safe", default=False, tooltip=_SAFE_TIP),
                        io.Boolean.Input("scribble", default=False, tooltip=_SCRIBBLE_TIP), _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, safe, scribble, detect_resolution=512) -> io.NodeOutput:
        edges = hed_edges(load_hed(_weight_path(weights)), image_to_bchw(image), detect_resolution, safe, scribble)
        return io.NodeOutput(bchw_to_image(edges))


class PiDiNetSoftEdges(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("PiDiNet", "PiDiNet Soft Edges",
                       "Soft edges from PiDiNet (table5_pidinet.pth), for softedge models.",
                       [_weights_input(w.PIDINET), io.Boolean.Input("safe", default=True, tooltip=_SAFE_TIP),
                        io.Boolean.Input("scribble", default=False, tooltip=_SCRIBBLE_TIP), _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, safe, scribble, detect_resolution=512) -> io.NodeOutput:
        edges = pidinet_edges(load_pidinet(_weight_path(weights)), image_to_bchw(image), detect_resolution, safe, scribble)
        return io.NodeOutput(bchw_to_image(edges))


class MLSDLines(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("MLSD", "M-LSD Straight Lines",
                       "Straight line segments (M-LSD, mlsd_large_512_fp32.pth), for MLSD models: "
                       "architecture and interiors.",
                       [_weights_input(w.MLSD),
                        io.Float.Input("score_threshold", default=0.1, min=0.0, max=1.0, step=0.01,
                                       tooltip="Minimum confidence of a line centre."),
                        io.Float.Input("distance_threshold", default=0.1, min=0.0, max=50.0, step=0.1,
                                       tooltip="Minimum line length, in detection pixels (half resolution)."),
                        _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, score_threshold, distance_threshold, detect_resolution=512) -> io.NodeOutput:
        lines = mlsd_lines(load_mlsd(_weight_path(weights)), image_to_bchw(image), detect_resolution,
                           score_threshold, distance_threshold)
        return io.NodeOutput(bchw_to_image(lines))


class LineartRealistic(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("LineartRealistic", "Realistic Lineart",
                       "Lineart drawn by the informative-drawings network (sk_model.pth; sk_model2.pth "
                       "gives the coarse style), white lines on black, for lineart models.",
                       [_weights_input(w.LINEART, w.LINEART_COARSE), _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, detect_resolution=512) -> io.NodeOutput:
        lines = lineart_realistic(load_lineart(_weight_path(weights)), image_to_bchw(image), detect_resolution)
        return io.NodeOutput(bchw_to_image(lines))


class DepthAnythingV2(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("DepthAnythingV2", "Depth Anything (V1 / V2)",
                       "Relative depth, near = white (Depth Anything V2 or V1: the original .pth files or a "
                       "transformers folder such as Depth-Anything-V2-Small-hf). V2 Small and all V1 files are "
                       "Apache-2.0; V2 Base and Large are CC-BY-NC-4.0.",
                       [_weights_input(w.DEPTH_ANYTHING_V2_SMALL, w.DEPTH_ANYTHING_V2_BASE, w.DEPTH_ANYTHING_V2_LARGE,
                                       w.DEPTH_ANYTHING_V2_SMALL_HF, w.DEPTH_ANYTHING_V1_SMALL,
                                       w.DEPTH_ANYTHING_V1_BASE, w.DEPTH_ANYTHING_V1_LARGE),
                        _detect_input(NATIVE_RESOLUTION),
                        io.Combo.Input("version", options=list(DEPTH_ANYTHING_VERSIONS), default="auto", optional=True,
                                       advanced=True,
                                       tooltip="V1 and V2 files share one layout and differ in which encoder layers "
                                               "feed the depth head. auto: from the published file name "
                                               "(depth_anything_v2_* = V2, depth_anything_vit?14 = V1) or a folder's "
                                               "config; a renamed file needs V1 or V2 here.")],
                       output="depth")

    @classmethod
    def execute(cls, image, weights, detect_resolution=NATIVE_RESOLUTION, version="auto") -> io.NodeOutput:
        depth = depth_anything(load_depth_anything(_weight_path(weights), version), image_to_bchw(image),
                               detect_resolution)
        return io.NodeOutput(bchw_to_image(depth))


class MiDaSDepth(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("MiDaS", "MiDaS Depth (DPT-Hybrid, DPT-Large)",
                       "Relative depth, near = white, from MiDaS: the original dpt_hybrid-midas-501f0c75.pt "
                       "(ControlNet's depth annotator), dpt_large-midas-2f21e586.pt or a transformers folder such as "
                       "Intel/dpt-hybrid-midas, run at the detect resolution.",
                       [_weights_input(w.MIDAS_DPT_HYBRID_ORIGINAL, w.MIDAS_DPT_LARGE_ORIGINAL, w.MIDAS_DPT_HYBRID),
                        _detect_input(DEFAULT_MIDAS_RESOLUTION)], output="depth")

    @classmethod
    def execute(cls, image, weights, detect_resolution=DEFAULT_MIDAS_RESOLUTION) -> io.NodeOutput:
        return io.NodeOutput(bchw_to_image(midas_depth(load_midas(_weight_path(weights)), image_to_bchw(image),
                                                       detect_resolution)))


class LineartAnime(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("LineartAnime", "Anime Lineart",
                       "Lineart of anime-style pictures drawn by ControlNet 1.1's lineart_anime network (netG.pth), "
                       "white lines on black, for the lineart_anime model.",
                       [_weights_input(w.LINEART_ANIME), _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, detect_resolution=512) -> io.NodeOutput:
        lines = lineart_anime(load_lineart_anime(_weight_path(weights)), image_to_bchw(image), detect_resolution)
        return io.NodeOutput(bchw_to_image(lines))


class LineartManga(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("LineartManga", "Manga Lineart",
                       "Lineart of manga and screentoned pictures drawn by ControlNet 1.1's manga_line network "
                       "(erika.pth, MangaLineExtraction), white lines on black, for the lineart_anime model.",
                       [_weights_input(w.LINEART_MANGA), _detect_input(512)])

    @classmethod
    def execute(cls, image, weights, detect_resolution=512) -> io.NodeOutput:
        lines = lineart_manga(load_lineart_manga(_weight_path(weights)), image_to_bchw(image), detect_resolution)
        return io.NodeOutput(bchw_to_image(lines))


class SegmentationADE20K(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("SegmentationADE20K", "Segmentation (ADE20K: UperNet, OneFormer)",
                       "Semantic segmentation painted in the ADE20K colours ControlNet's seg models expect, from a "
                       "transformers UperNet folder (openmmlab/upernet-convnext-small or -large) or OneFormer folder "
                       "(shi-labs/oneformer_ade20k_swin_large or _swin_tiny) in models/preprocessors; all MIT.",
                       [_weights_input(w.UPERNET_CONVNEXT_SMALL, w.UPERNET_CONVNEXT_LARGE, w.ONEFORMER_ADE20K_SWIN_LARGE,
                                       w.ONEFORMER_ADE20K_SWIN_TINY), _detect_input(512)],
                       output="segmentation")

    @classmethod
    def execute(cls, image, weights, detect_resolution=512) -> io.NodeOutput:
        return io.NodeOutput(bchw_to_image(segment(load_segmenter(_weight_path(weights)), image_to_bchw(image),
                                                   detect_resolution)))


class NormalBAE(_LearnedNode):
    @classmethod
    def define_schema(cls):
        return _schema("NormalBae", "Normal Map (BAE)",
                       "Surface normals estimated from the picture by BAE (scannet.pt), in the colours ControlNet "
                       "1.1's normalbae model expects.",
                       [_weights_input(w.NORMAL_BAE), _detect_input(DEFAULT_BAE_RESOLUTION)], output="normals")

    @classmethod
    def execute(cls, image, weights, detect_resolution=DEFAULT_BAE_RESOLUTION) -> io.NodeOutput:
        return io.NodeOutput(bchw_to_image(normal_bae(load_normal_bae(_weight_path(weights)), image_to_bchw(image),
                                                      detect_resolution)))


class NormalFromDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LLLiteKit_NormalFromDepth", display_name="Normal Map from Depth (LLLite Kit)", category=CATEGORY,
            description="Normal map from a depth guide (near = white), e.g. from Depth Anything or MiDaS. "
                        "Red = facing right, green = facing up, blue = facing the viewer.",
            inputs=[io.Image.Input("depth", tooltip="A depth guide: near = bright."),
                    io.Float.Input("strength", default=1.0, min=0.0, max=100.0, step=0.05,
                                   tooltip="How strongly depth slopes tilt the normals (slope measured in depth "
                                           "range per image width)."),
                    io.Float.Input("background_threshold", default=0.1, min=0.0, max=1.0, step=0.01,
                                   tooltip="Depth below this (far away) is treated as flat background.")],
            outputs=[io.Image.Output(display_name="normals")])

    @classmethod
    def execute(cls, depth, strength, background_threshold) -> io.NodeOutput:
        return _classical(lambda x: normals_from_depth(x, strength, background_threshold), depth)


NODES = [CannyEdges, LineartStandard, ScribbleXDoG, BinaryThreshold, InvertImage, TileGuide, BlurGuide,
         HEDSoftEdges, PiDiNetSoftEdges, MLSDLines, LineartRealistic, DepthAnythingV2, MiDaSDepth, NormalFromDepth,
         LineartAnime, LineartManga, SegmentationADE20K, NormalBAE]
