"""Shared pieces: the ComfyUI bridge, model loading, cameras, video I/O, the headless runner."""
