"""Thin V3 node classes. Each module lists its nodes in NODES; this is the one registry."""
from . import preprocessor_nodes
from . import pose_nodes
from . import lllite_nodes
from . import training_nodes
from . import lllite_training_nodes
from . import lora_tools_nodes
from . import distributed_nodes
from . import controllability_nodes
from . import distill_nodes
from . import dataset_prep_nodes
from . import textual_inversion_nodes
from . import full_model_nodes
from . import controlnet_nodes

NODE_CLASSES = [
    *preprocessor_nodes.NODES,
    *pose_nodes.NODES,
    *lllite_nodes.NODES,
    *training_nodes.NODES,
    *lllite_training_nodes.NODES,
    *lora_tools_nodes.NODES,
    *distributed_nodes.NODES,
    *controllability_nodes.NODES,
    *distill_nodes.NODES,
    *dataset_prep_nodes.NODES,
    *textual_inversion_nodes.NODES,
    *full_model_nodes.NODES,
    *controlnet_nodes.NODES,
]
