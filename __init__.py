"""Consistent Video Suite: ComfyUI entry point.

ComfyUI imports this file from ``custom_nodes/<any folder name>/`` and reads
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``. ``pip install -e .`` maps the
same folder to the package ``consistent_video`` (``python -m consistent_video ...``).
Every import below is relative, so both names work.
"""
from .nodes.cameras import camera_nodes
from .nodes.comfy import loader_nodes
from .nodes.splats import splat_nodes
from .nodes.video import video_nodes
from .nodes.comfy.input_guard import guard_float_inputs
from . import gvm_nodes  # registers the GVM model family
from .gvm_nodes import nodes as gvm_node_defs
from .vmem_nodes import nodes as vmem_node_defs  # also registers the VMem, SEVA and Depth Anything families
from .vmem_nodes import navigate_nodes as vmem_navigate_defs
from .videomv_nodes import nodes as videomv_node_defs  # also registers the VideoMV T2V and I2V families
from .memory_v2v_nodes import nodes as memory_v2v_node_defs  # also registers the ReCamMaster families
from .memory_v2v_nodes import edit_nodes as memory_v2v_edit_defs  # also registers the LucyEdit family
from .videoscene_nodes import nodes as videoscene_node_defs  # also registers the VideoScene family

_NODE_MODULES = (loader_nodes, video_nodes, camera_nodes, splat_nodes, gvm_node_defs, vmem_node_defs, vmem_navigate_defs,
                 videomv_node_defs, memory_v2v_node_defs, memory_v2v_edit_defs, videoscene_node_defs)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _NODE_MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
for _node_id, _cls in NODE_CLASS_MAPPINGS.items():  # NaN / inf FLOATs pass ComfyUI's min/max checks
    guard_float_inputs(_cls, NODE_DISPLAY_NAME_MAPPINGS[_node_id])

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
