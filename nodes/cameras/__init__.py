"""Cameras: the camera batch every system passes (OpenCV camera-to-world, normalised
intrinsics) and its math, conversions to and from camera file formats, trajectories,
preview drawings and the camera nodes. Imports :mod:`..comfy` and :mod:`..video` (camera
files are found and written like videos).
"""
