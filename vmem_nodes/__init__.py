"""VMem: the surfel-indexed view memory (surfels, spatial index, retrieval, persistence)."""

from .depth_family import DEPTH_FAMILY  # noqa: F401  (registers the Depth Anything V2 family)
