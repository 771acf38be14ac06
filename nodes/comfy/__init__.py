"""The bottom layer: everything that knows about ComfyUI or about files on disk.

The runtime bridge (the only module that touches ``comfy.*`` / ``folder_paths``), the
registry of model families and the shared loader node, weights I/O (strict loading,
downloads), the node contract (reading a node class's declared inputs), input errors and the
finite-FLOAT guard, JSON files, atomically written tensor files and the named state files of
memories. Imports nothing else of the pack.
"""
