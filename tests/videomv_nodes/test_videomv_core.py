"""VideoMV core pieces against independent constructions: the 16-float camera data, the
two DDIM samplers (schedules and one step by hand) and the I2V input recentring."""
import math

import numpy as np
import pytest
import torch

from consistent_video.nodes.cameras import formats as F
from consistent_video.nodes.cameras import trajectories as T
from consistent_video.videomv_nodes import schedules as S
from consistent_video.videomv_nodes.prepare import prepare_object_image
from videomv_reference import videomv_camera_data


# ---- camera data -----------------------------------------------------------------------------
@pytest.mark.parametrize("elevation, distance", [(15.0, 2.0), (5.0, 1.7)])  # T2V, I2V
@pytest.mark.parametrize("azimuth_start", [0.0, 30.0, -45.0, 200.0])
def test_videomv_camera_data_matches_videomv_construction(elevation, distance, azimuth_start):
    cams = T.orbit(24, elevation, distance, azimuth_start_deg=azimuth_start, width=256, height=256)
    data = F.to_videomv_cameras(cams)
    assert data.shape == (24, 16) and data.dtype == torch.float32
    expected = videomv_camera_data(24, elevation, distance, azimuth_start)
    np.testing.assert_allclose(data.double().numpy(), expected, atol=1e-6)


def test_videomv_camera_data_known_first_view():
    # T2V view 0: camera at d (cosE, 0, sinE) in VideoMV's final z-up world, looking at
    # the origin; OpenGL axes: x right = +y world, y up, z backward = the position direction.
    e = math.radians(15.0)
    expected = torch.tensor([[0.0, -math.sin(e), math.cos(e), 2.0 * math.cos(e)],
                             [1.0, 0.0, 0.0, 0.0],
                             [0.0, math.cos(e), math.sin(e), 2.0 * math.sin(e)],
                             [0.0, 0.0, 0.0, 1.0]])
    data = F.to_videomv_cameras(T.orbit(24, 15.0, 2.0))
    torch.testing.assert_close(data[0].view(4, 4), expected, atol=1e-6, rtol=0)


def test_videomv_camera_data_round_trip():
    cams = T.orbit(24, 5.0, 1.7, azimuth_start_deg=10.0, width=256, height=256, fov_deg=39.6)
    back = F.from_videomv_cameras(F.to_videomv_cameras(cams))
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.K, cams.K, atol=1e-6, rtol=0)
    assert (back.width, back.height) == (256, 256)
    one = F.from_videomv_cameras(videomv_camera_data(24, 15.0, 2.0, 0.0)[3], 64, 48, 50.0)
    assert len(one) == 1 and (one.width, one.height) == (64, 48)


def test_from_videomv_cameras_rejects_bad_data():
    with pytest.raises(F.CameraFormatError, match=r"\[N,16\]"):
        F.from_videomv_cameras(torch.zeros(2, 12))
    with pytest.raises(F.CameraFormatError, match="VideoMV"):
        F.from_videomv_cameras(torch.zeros(1, 16))  # not a rigid transform


# ---- schedules -----------------------------------------------------------------------------
def vgen_linear_sd_alphabar():
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def vgen_cosine_zero_snr_alphabar():
    """Improved-DDPM cosine betas (s = 0.008, clipped at 0.999 as VGen does), then Lin et al.
    (2023) algorithm 1: shift sqrt(alphabar) so the last is 0, scale so the first is kept."""
    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1.0 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)])
    assert betas[-1] == 0.999 and (betas[:-1] < 0.999).all()  # only the last beta is clipped
    root = np.sqrt(np.cumprod(1.0 - betas))
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root ** 2


VIDEOMV_TIMESTEPS = list(range(981, 0, -20))


@pytest.mark.parametrize("make, alphabar, prediction", [
    (S.t2v_scheduler, vgen_linear_sd_alphabar, "epsilon"),
    (S.i2v_scheduler, vgen_cosine_zero_snr_alphabar, "v_prediction")])
def test_scheduler_matches_vgen_schedule(make, alphabar, prediction):
    sched = make()
    expected = alphabar()
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), expected, atol=1e-6, rtol=0)
    assert sched.config.prediction_type == prediction
    assert float(sched.final_alpha_cumprod) == pytest.approx(expected[0], abs=1e-6)
    sched.set_timesteps(S.NUM_STEPS)
    assert sched.timesteps.tolist() == VIDEOMV_TIMESTEPS
    assert VIDEOMV_TIMESTEPS[0] == 981 and VIDEOMV_TIMESTEPS[-1] == 1 and len(VIDEOMV_TIMESTEPS) == 50


def ddim_step_by_hand(x, out, a_t, a_prev, prediction):
    """Deterministic DDIM (eta 0): x0 and eps from the model output, then
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    if prediction == "epsilon":
        eps = out
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    else:  # v = sqrt(a) eps - sqrt(1 - a) x0
        x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
        eps = math.sqrt(1 - a_t) * x + math.sqrt(a_t) * out
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


@pytest.mark.parametrize("make, prediction", [(S.t2v_scheduler, "epsilon"), (S.i2v_scheduler, "v_prediction")])
@pytest.mark.parametrize("t, t_prev", [(981, 961), (501, 481), (1, 0)])  # last step: previous alpha is alphabar[0]
def test_ddim_step_matches_formula(make, prediction, t, t_prev):
    # the schedule itself is checked above; here the step, with the scheduler's own alphabar
    sched = make()
    sched.set_timesteps(S.NUM_STEPS)
    ab = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 4, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(1, 4, 3, 4, 4, generator=gen, dtype=torch.float64) * 3.0  # large: no clipping may happen
    got = sched.step(out, t, x, eta=0.0).prev_sample
    expected = ddim_step_by_hand(x, out, float(ab[t]), float(ab[t_prev]), prediction)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


def test_mode_defaults():
    assert (S.T2V.guidance, S.T2V.elevation_deg, S.T2V.distance) == (9.0, 15.0, 2.0)
    assert (S.I2V.guidance, S.I2V.elevation_deg, S.I2V.distance) == (6.0, 5.0, 1.7)
    assert S.MODES == {"t2v": S.T2V, "i2v": S.I2V}
    assert (S.NUM_VIEWS, S.RESOLUTION, S.NUM_STEPS) == (24, 256, 50)
    assert S.t2v_prompt("a red chair") == "a red chair, 3d asset"
    assert S.t2v_prompt("a red chair, 3d asset") == "a red chair, 3d asset"


# ---- I2V input preparation -------------------------------------------------------------------
def soft_disk(height, width, cy, cx, radius, softness=2.0):
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    return ((radius - r) / softness + 0.5).clamp(0, 1)


@pytest.mark.parametrize("radius", [60.0, 25.0])  # shrunk and enlarged
def test_prepare_object_image_recentres(radius):
    h, w = 300, 420
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(h, w, 3, generator=gen)  # random background
    alpha = soft_disk(h, w, cy=90.0, cx=300.0, radius=radius)
    colour = torch.tensor([0.8, 0.2, 0.3])
    image[alpha > 0] = colour
    out = prepare_object_image(image, alpha)
    assert out.shape == (256, 256, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    obj = (out - 1.0).abs().amax(-1) > 1e-3  # not white
    rows, cols = obj.any(1).nonzero()[:, 0], obj.any(0).nonzero()[:, 0]
    extent_h, extent_w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert abs(max(extent_h, extent_w) - 200) <= 1 and abs(extent_h - extent_w) <= 1
    centre = ((rows[0] + rows[-1] + 1) / 2.0, (cols[0] + cols[-1] + 1) / 2.0)
    assert abs(centre[0] - 128) <= 1 and abs(centre[1] - 128) <= 1
    for corner in (out[:5, :5], out[:5, -5:], out[-5:, :5], out[-5:, -5:]):
        assert torch.equal(corner, torch.ones_like(corner))
    torch.testing.assert_close(out[118:138, 118:138], colour.expand(20, 20, 3), atol=1e-5, rtol=0)


def test_prepare_object_image_background_and_exact_box():
    # a hard 10 x 40 opaque bar: box 10 x 40 -> 50 x 200, pasted at rows 103..152, cols 28..227
    image = torch.zeros(64, 80, 3)
    alpha = torch.zeros(64, 80)
    alpha[20:30, 5:45] = 1.0
    image[20:30, 5:45] = torch.tensor([0.0, 0.5, 1.0])
    out = prepare_object_image(image.numpy(), alpha.numpy(), background=0.5)
    assert torch.equal(out[0, 0], torch.full((3,), 0.5))
    torch.testing.assert_close(out[103:153, 28:228], torch.tensor([0.0, 0.5, 1.0]).expand(50, 200, 3))
    assert (out[102] == 0.5).all() and (out[153] == 0.5).all()
    assert (out[:, 27] == 0.5).all() and (out[:, 228] == 0.5).all()


def test_prepare_object_image_rejects_bad_input():
    image = torch.rand(32, 48, 3)
    with pytest.raises(ValueError, match="no object: the mask is empty"):
        prepare_object_image(image, torch.zeros(32, 48))
    with pytest.raises(ValueError, match=r"image must be \[H,W,3\]"):
        prepare_object_image(torch.rand(32, 48, 4), torch.ones(32, 48))
    with pytest.raises(ValueError, match=r"alpha must be \[H,W\]"):
        prepare_object_image(image, torch.ones(48, 32))
    with pytest.raises(ValueError, match="object_size"):
        prepare_object_image(image, torch.ones(32, 48), size=128, object_size=200)
