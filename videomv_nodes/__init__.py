"""VideoMV: consistent multi-view (orbit) generation from text or one image."""

from .family import I2V_FAMILY, T2V_FAMILY  # noqa: F401  (registers the VideoMV T2V and I2V families)
