"""Pieces shared by the five systems, one sub-package per concern, in layers.

Read bottom to top; a sub-package imports only sub-packages below it (and never a
capability folder):

- ``comfy``: the bridge to ComfyUI (folders, devices, progress, Cancel), model families and
  the loader node, weights I/O, the node contract, input errors and guards, state files.
- ``networks``: network building blocks that two or more systems are built from.
- ``encoders``: VAE, CLIP image and text encoders behind one interface each.
- ``video``: video files and image sequences in and out, the video nodes.
- ``cameras``: the camera batch and its math, camera file formats, trajectories, previews,
  the camera nodes.
- ``splats``: 3D Gaussian scenes, PLY files, the rasteriser, the splat nodes.
- ``runner``: workflow formats, the headless runner and the command line; the top layer,
  imported by nothing else in the pack.

:data:`LAYERS` is that order; ``tests/test_layering.py`` enforces it and
``docs/architecture.md`` explains it.
"""

LAYERS = ("comfy", "networks", "encoders", "video", "cameras", "splats", "runner")
"""The sub-packages of ``nodes/``, bottom layer first: each may import only those before it."""
