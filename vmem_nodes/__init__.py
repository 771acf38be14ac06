"""VMem: surfel-indexed view memory and scene navigation on the SEVA-architecture model."""

from .depth_family import DEPTH_FAMILY  # noqa: F401  (registers the Depth Anything V2 family)
from .family import SEVA_FAMILY, VMEM_FAMILY  # noqa: F401  (registers the VMem and SEVA families)
