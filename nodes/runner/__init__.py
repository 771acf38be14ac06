"""The top layer: the two workflow formats (UI and API) and conversion between them, the
headless runner that executes a workflow with ComfyUI's semantics, and the command line
(``python -m consistent_video run|demo|smoke-weights``). May import anything in the pack,
including the root package's node registry; nothing else in the pack imports it.
"""
