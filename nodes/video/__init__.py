"""Video files and image sequences in and out as float frames (PyAV, PIL), input and output
file names in ComfyUI's folders, and the video nodes (load, save, composite). Imports only
:mod:`..comfy` (and the layers below it).
"""
