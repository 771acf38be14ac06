"""VideoScene: one-step refinement of a coarse 3D render into a consistent scene video (CogVideoX)."""

from .family import FAMILY  # noqa: F401  (registers the family)
from .noposplat_family import FAMILY as NOPOSPLAT_FAMILY  # noqa: F401  (registers the family)
