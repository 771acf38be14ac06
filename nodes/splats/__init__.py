"""3D Gaussian splats: the scene type and its PLY files, the tile rasteriser (torch, or gsplat
on CUDA) and the splat nodes. Imports :mod:`..cameras` and the layers below it.
"""
