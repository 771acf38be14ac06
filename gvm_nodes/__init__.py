"""GVM: one-step generative video matting on an SVD-architecture UNet."""
from .family import GVM_FAMILY  # noqa: F401  (registers the family)
