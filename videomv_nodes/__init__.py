"""VideoMV: consistent multi-view (orbit) generation from text or one image (work in progress)."""
