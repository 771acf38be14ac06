"""Memory-V2V: multi-turn video re-rendering (ReCamMaster on Wan2.1) with a memory of earlier turns."""

from .family import RECAMMASTER_BF16_FAMILY, RECAMMASTER_FAMILY  # noqa: F401  (registers the families)
from .dinov2 import FAMILY as DINOV2_FAMILY  # noqa: F401  (registers the DINOv2 family)
from .lucy_family import FAMILY as LUCYEDIT_FAMILY  # noqa: F401  (registers the LucyEdit family)
