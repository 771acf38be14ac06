"""VideoMV's per-view camera data built from scratch in numpy, shared by the VideoMV tests
(an independent construction, not the pack's code)."""
import math

import numpy as np


def videomv_camera_data(views, elevation_deg, distance, azimuth_start_deg):
    """VideoMV's per-view 16 floats built from scratch in numpy: OpenGL look-at with world
    up +y, then flip_yz, then "negate row 1, swap rows 0 and 1", then row-major flatten."""
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    out = []
    for i in range(views):
        az = math.radians(azimuth_start_deg + i * 360.0 / views)
        el = math.radians(elevation_deg)
        pos = distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        forward = -pos / np.linalg.norm(pos)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, pos
        m = flip_yz @ m
        m[1] *= -1
        m[[0, 1]] = m[[1, 0]]
        out.append(m.reshape(16))
    return np.stack(out)
