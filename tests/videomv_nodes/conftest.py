"""VideoMV smoke models, shared by the VideoMV node test files."""
import pytest

from consistent_video.nodes.comfy import families


@pytest.fixture(scope="module")
def t2v(smoke_weights_dir):
    """The VideoMV text-to-views smoke model on the CPU (float32)."""
    import torch
    from consistent_video.videomv_nodes import family as videomv_family
    return families.get(videomv_family.T2V).load(smoke_weights_dir / videomv_family.T2V, torch.device("cpu"),
                                                 torch.float32)


@pytest.fixture(scope="module")
def i2v(smoke_weights_dir):
    """The VideoMV image-to-views smoke model on the CPU (float32)."""
    import torch
    from consistent_video.videomv_nodes import family as videomv_family
    return families.get(videomv_family.I2V).load(smoke_weights_dir / videomv_family.I2V, torch.device("cpu"),
                                                 torch.float32)
