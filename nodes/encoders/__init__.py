"""Encoders shared by several systems, each behind one small interface with a ComfyUI-object
and a transformers/diffusers implementation: image VAEs, CLIP image embedders, CLIP text
encoders (and OpenCLIP checkpoint conversion), plus their input checks. Imports only
:mod:`..comfy` (and :mod:`..networks`).
"""
