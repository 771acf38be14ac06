"""Network building blocks that two or more systems are built from (plain torch modules).

CroCo-family parts, as NoPoSplat (VideoScene) uses them and CUT3R (VMem) will:

- :mod:`.croco`: 2-D RoPE, the MLP, self- and cross-attention, the pre-norm ViT encoder block,
  the cross-attending two-view decoder block (DUSt3R), the patch embedding;
- :mod:`.dpt`: the DPT head (residual conv unit, fusion block, the reassembly/fusion trunk,
  DUSt3R's regression adapter and the ``dpt``-nesting pixel head).

A block that only one system uses stays in that system's folder. Imports only :mod:`..comfy`.
"""
