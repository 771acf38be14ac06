"""Network building blocks that two or more systems are built from (plain torch modules).

CroCo-family parts: ViT blocks with 2-D RoPE, the cross-attending decoder block and the DPT
head, as NoPoSplat (VideoScene) uses them and CUT3R (VMem) will. A block that only one system
uses stays in that system's folder. Imports only :mod:`..comfy`.
"""
