"""VideoMV's 3D-aware denoising (videomv_nodes/denoise_3d.py) against hand-written versions of
the original procedure: the entrance script's LGM camera normalisation and LGM's get_rays
(numpy, from VideoMV's 16 floats), and VGen's DDIM loop with the x0 replacement at the chosen
steps (stub UNet, VAE, reconstructor and renderer)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov
from consistent_video.nodes.splats.gaussians import GaussianScene, rgb_to_sh_dc
from consistent_video.nodes.encoders.vae import LatentCodec
from consistent_video.videomv_nodes import denoise_3d as D
from consistent_video.videomv_nodes import pipeline as P
from videomv_reference import videomv_camera_data
from consistent_video.videomv_nodes.pipeline import orbit_cameras


# ---- the original's cameras, by hand ---------------------------------------------------------
def entrance_poses(data):
    """inference_text2video_entrance.py l.198-212: rows and columns flipped, then normalised so
    view 0 sits at (0, 0, d) with the identity rotation."""
    g = data.copy()
    g[:, 1] *= -1
    g[:, [1, 2]] = g[:, [2, 1]]
    g[:, :3, 1:3] *= -1
    d = np.linalg.norm(g[0, :3, 3])
    shift = np.eye(4)
    shift[2, 3] = d
    return (shift @ np.linalg.inv(g[0]))[None] @ g


def get_rays_plucker(pose, h, w, fovy):
    """LGM core/utils.get_rays (opengl=True) then cat([cross(o, d), d]), -> [6, h, w]."""
    x, y = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
    focal = h * 0.5 / math.tan(0.5 * math.radians(fovy))
    dirs = np.stack([(x - w * 0.5 + 0.5) / focal, -(y - h * 0.5 + 0.5) / focal, -np.ones_like(x, float)], -1)
    d = dirs @ pose[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(pose[:3, 3], d.shape)
    return np.concatenate([np.cross(o, d), d], -1).transpose(2, 0, 1)


@pytest.mark.parametrize("elevation, distance", [(15.0, 2.0), (5.0, 1.7)])
def test_lgm_poses_match_entrance_script(elevation, distance):
    poses = D.lgm_poses(orbit_cameras(24, elevation, distance))
    expected = entrance_poses(videomv_camera_data(24, elevation, distance, 0.0).reshape(-1, 4, 4))
    np.testing.assert_allclose(poses.double().numpy(), expected, atol=2e-6)
    first = np.eye(4)
    first[2, 3] = distance
    np.testing.assert_allclose(poses[0].double().numpy(), first, atol=1e-6)


@pytest.mark.parametrize("elevation, distance", [(15.0, 2.0), (5.0, 1.7)])
def test_lgm_rays_match_get_rays(elevation, distance):
    poses = entrance_poses(videomv_camera_data(24, elevation, distance, 0.0).reshape(-1, 4, 4))[list(D.LGM_VIEWS)]
    rays = D.lgm_rays(D.lgm_poses(orbit_cameras(24, elevation, distance))[list(D.LGM_VIEWS)])
    assert rays.shape == (4, 6, 256, 256)
    expected = np.stack([get_rays_plucker(p, 256, 256, 39.6) for p in poses])
    np.testing.assert_allclose(rays.double().numpy(), expected, atol=2e-5)


def test_render_cameras_are_the_colmap_flip():
    poses = D.lgm_poses(orbit_cameras(24, 15.0, 2.0))
    cams = D.lgm_cameras(poses, 512)
    flipped = poses.double().numpy().copy()
    flipped[:, :3, 1:3] *= -1  # entrance l.226
    np.testing.assert_allclose(cams.c2w.double().numpy(), flipped, atol=1e-6)
    # projection of LGM's proj_matrix: f = 1 / tan(fovy/2) in NDC, centred principal point
    np.testing.assert_allclose(cams.K[0, 1, 1].item() * 2, 1 / math.tan(math.radians(39.6) / 2), rtol=1e-6)
    assert (cams.width, cams.height) == (512, 512)
    # view 0 looks at -z from (0,0,d): the point (0,0,0) projects to the image centre
    w2c = torch.linalg.inv(cams.c2w[0].double())
    p = w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert p[2] > 0 and abs(p[0]) < 1e-9 and abs(p[1]) < 1e-9


# ---- stubs ----------------------------------------------------------------------------------
class StubCodec(LatentCodec):
    """Deterministic 'VAE': decode = nearest x8 upsampling of a squashed 3-channel mix (reaching
    outside 0..1, so a missing clamp shows); encode =
    8x8 average pooling of a fixed linear map of [-1,1] images."""

    def decode(self, latents):
        z = latents.float()
        rgb = torch.sigmoid(z[:, :3] + 0.5 * z[:, 3:4]) * 1.4 - 0.2  # out of 0..1: the caller clamps
        return F.interpolate(rgb, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)

    def encode(self, images):
        x = images.float().permute(0, 3, 1, 2) * 2 - 1
        x = F.avg_pool2d(x, 8)
        return torch.cat([x, x.mean(1, keepdim=True) * 0.5], 1)


class StubUNet(torch.nn.Module):
    """Model output depending on the sample, the timestep, the camera and the text tokens."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.mix = torch.nn.Parameter(torch.randn(4, 4, generator=gen) * 0.3)

    def forward(self, sample, t, camera=None, return_dict=False, encoder_hidden_states=None):
        out = torch.einsum("oc,bcfhw->bofhw", self.mix, sample)
        out = out + 0.01 * float(t) ** 0.5 + camera[:, None, :, :1, None] * 0.1
        out = out + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1, 1)
        return (torch.tanh(out),)


class StubReconstructor:
    """Known Gaussians from the LGM input: colours from the de-normalised views, positions from
    the rays; records a copy of every input and then overwrites it (as VideoMV's UNet does)."""

    def __init__(self):
        self.inputs = []

    def __call__(self, views):
        self.inputs.append(views.clone())
        rgb = views[0, :, :3] * torch.tensor(D.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(D.IMAGENET_MEAN).view(
            1, 3, 1, 1)
        colours = rgb.mean((2, 3))  # [4,3]
        means = views[0, :, 3:6].mean((2, 3)) * 0.1  # [4,3]
        views.zero_()  # in-place change: must not reach the other branch
        n = colours.shape[0]
        return [GaussianScene(means, torch.full((n, 3), 0.1), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                              torch.full((n,), 0.5), rgb_to_sh_dc(colours)[:, None])]


def stub_render(scene, cameras, background):
    """Per camera a flat image: the Gaussians' mean colour tinted by the camera centre."""
    colour = scene.sh[:, 0].mean(0) * 0.28209479177387814 + 0.5 + 0.05 * scene.means.mean(0)
    tint = 0.1 * torch.tanh(cameras.c2w[:, :3, 3])  # [N,3]
    rgb = (0.5 * colour + 0.5 * background + tint).clamp(0, 1)
    return rgb[:, None, None, :].expand(-1, cameras.height, cameras.width, -1).contiguous()


# ---- the original sampling loop by hand --------------------------------------------------------
VIEWS, RES, STEPS = 8, 64, 5
SMALL = dict(views=(0, 2, 4, 6), input_size=RES, render_size=2 * RES)


def hand_loop(unet, mode, cond, cams, settings, refine_at, background, recorder):
    """VGen's ddim_sample_loop with use_lgm_refine (diffusion_ddim.py l.253-259, ddim_sample
    l.199-244, unet_t2v.py l.402-432), in float64 where it is not the network."""
    sched = P.SCHEDULERS[mode]()
    ab = sched.alphas_cumprod.double()
    stride = 1000 // settings.steps
    steps = (1 + torch.arange(0, 1000, stride)).clamp(0, 999).flip(0)
    data = videomv_camera_data(VIEWS, 15.0, 2.0, 0.0).reshape(-1, 4, 4)
    poses = entrance_poses(data)
    rays = torch.from_numpy(np.stack([get_rays_plucker(poses[v], RES, RES, 39.6) for v in SMALL["views"]])).float()
    render_c2w = poses.copy()
    render_c2w[:, :3, 1:3] *= -1
    render_cams = CameraBatch(torch.from_numpy(render_c2w).float(), intrinsics_from_fov(39.6, 2 * RES, 2 * RES),
                              2 * RES, 2 * RES)
    codec = StubCodec()
    mean, std = torch.tensor(D.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(D.IMAGENET_STD).view(1, 3, 1, 1)
    x = P.initial_noise(VIEWS, RES, settings.seed).double()
    camera = P.to_videomv_cameras(cams).unsqueeze(0).expand(2, -1, -1)
    text = cond["encoder_hidden_states"]
    for idx, step in enumerate(steps.tolist()):
        a = ab[step]
        y_out = unet(x.float(), torch.tensor(step), camera=camera[:1], encoder_hidden_states=text[:1])[0].double()
        u_out = unet(x.float(), torch.tensor(step), camera=camera[1:], encoder_hidden_states=text[1:])[0].double()

        def x0_of(out):
            if mode == "t2v":
                return (1 / a).sqrt() * x - (1 / a - 1).sqrt() * out
            return a.sqrt() * x - (1 - a).sqrt() * out

        if idx in refine_at:
            latents = []
            for out in (y_out, u_out):
                fake = x0_of(out)[:, :, list(SMALL["views"])]  # [1,4,4,h,w]
                imgs = codec.decode(fake[0].permute(1, 0, 2, 3).float()).permute(0, 3, 1, 2).clamp(0, 1)
                lgm_in = torch.cat([(imgs - mean) / std, rays], 1)[None]
                scene = recorder(lgm_in)[0]
                rgb = stub_render(scene, render_cams, background)
                small = F.interpolate(rgb.permute(0, 3, 1, 2), (RES, RES), mode="nearest")
                latents.append(codec.encode(small.permute(0, 2, 3, 1)).permute(1, 0, 2, 3)[None].double())
            x0 = latents[1] + settings.guidance * (latents[0] - latents[1])
        else:
            x0 = x0_of(u_out + settings.guidance * (y_out - u_out))
        eps = ((1 / a).sqrt() * x - x0) / (1 / a - 1).sqrt()
        a_prev = ab[max(step - stride, 0)]
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.float()


def _setup(mode):
    torch.manual_seed(0)
    unet = StubUNet()
    text = torch.randn(2, 3, 5)
    cams = orbit_cameras(VIEWS, 15.0, 2.0, resolution=RES)
    settings = P.ViewSettings(guidance=9.0 if mode == "t2v" else 6.0, steps=STEPS, seed=7, resolution=RES)
    return unet, {"encoder_hidden_states": text}, cams, settings


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_sampler_with_3d_steps_matches_original_loop(mode):
    unet, cond, cams, settings = _setup(mode)
    refine_at = (1, 3)
    bg = D.BACKGROUND[mode]
    ours_rec, hand_rec = StubReconstructor(), StubReconstructor()
    rs = D.RefineSettings(background=bg, steps=refine_at, **SMALL)
    latents, scene = D.sample_latents_3d(unet, mode, cond, cams, settings, StubCodec(), ours_rec, rs,
                                         renderer=stub_render)
    expected = hand_loop(unet, mode, cond, cams, settings, refine_at, bg, hand_rec)
    torch.testing.assert_close(latents, expected, atol=2e-5, rtol=1e-4)
    assert len(ours_rec.inputs) == 4 and scene is not None
    for got, want in zip(ours_rec.inputs, hand_rec.inputs):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the 3D-aware steps changed the result
    plain = P.sample_latents(unet, mode, cond, P.to_videomv_cameras(cams), settings)
    assert (plain - latents).abs().max() > 1e-3


def test_no_3d_steps_equals_existing_sampler():
    unet, cond, cams, settings = _setup("t2v")
    rec = StubReconstructor()
    rs = D.RefineSettings(background=0.5, steps=(), **SMALL)
    latents, scene = D.sample_latents_3d(unet, "t2v", cond, cams, settings, StubCodec(), rec, rs, renderer=stub_render)
    plain = P.sample_latents(unet, "t2v", cond, P.to_videomv_cameras(cams), settings)
    assert torch.equal(latents, plain) and scene is None and rec.inputs == []


def test_branches_get_separate_inputs():
    codec = StubCodec()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, VIEWS, RES // 8, RES // 8, generator=gen)
    cams = orbit_cameras(VIEWS, 15.0, 2.0, resolution=RES)
    rec = StubReconstructor()
    rs = D.RefineSettings(background=0.5, **SMALL)
    latents, scenes = D.refine_x0(x0, codec, cams, rec, rs, renderer=stub_render)
    assert latents.shape == x0.shape and len(scenes) == 2 and len(rec.inputs) == 2
    rays = D.lgm_rays(D.lgm_poses(cams)[list(SMALL["views"])], RES)
    for i in range(2):  # each call saw its own branch's views, despite the stub zeroing its input
        torch.testing.assert_close(rec.inputs[i], D.lgm_input(x0[i:i + 1], codec, rays, SMALL["views"]))
    assert (rec.inputs[0][:, :, :3] - rec.inputs[1][:, :, :3]).abs().max() > 1e-2
    torch.testing.assert_close(rec.inputs[0][:, :, 3:], rec.inputs[1][:, :, 3:])
    assert not torch.equal(latents[0], latents[1])


def test_lgm_input_layout():
    codec = StubCodec()
    x0 = torch.zeros(1, 4, 24, 32, 32)
    x0[:, :, 6] = 2.0
    rays = torch.randn(4, 6, 256, 256)
    out = D.lgm_input(x0, codec, rays)
    assert out.shape == (1, 4, 9, 256, 256)
    mean, std = torch.tensor(D.IMAGENET_MEAN), torch.tensor(D.IMAGENET_STD)
    torch.testing.assert_close(out[0, 0, :3, 0, 0], (0.5 - mean) / std)  # sigmoid(0)
    torch.testing.assert_close(out[0, 1, :3, 0, 0], (1.0 - mean) / std)  # 1.4 sigmoid(3) - 0.2 > 1: clamped
    torch.testing.assert_close(out[0, :, 3:], rays)


def test_renders_to_latents_nearest_and_layout():
    rgb = torch.rand(3, 16, 16, 3)
    seen = []

    def encode(images):
        seen.append(images)
        return torch.zeros(images.shape[0], 4, 1, 1) + torch.arange(images.shape[0]).view(-1, 1, 1, 1)

    lat = D.renders_to_latents(rgb, encode, size=8)
    assert lat.shape == (4, 3, 1, 1) and torch.equal(lat[0, :, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(seen[0], rgb[:, ::2, ::2])


def test_splat_renderer_background_and_colour():
    poses = D.lgm_poses(orbit_cameras(24, 15.0, 2.0))[:2]
    cams = D.lgm_cameras(poses, 32)
    scene = GaussianScene(torch.tensor([[0.0, 0.0, 0.0]]), torch.full((1, 3), 0.2), torch.tensor([[1.0, 0, 0, 0]]),
                          torch.tensor([0.99]), rgb_to_sh_dc(torch.tensor([[1.0, 0.0, 0.0]]))[:, None])
    rgb = D.splat_renderer(backend="torch")(scene, cams, 0.7)
    assert rgb.shape == (2, 32, 32, 3)
    torch.testing.assert_close(rgb[0, 0, 0], torch.full((3,), 0.7))  # corner: background
    assert rgb[0, 16, 16, 0] > 0.9 and rgb[0, 16, 16, 1] < 0.1  # the red Gaussian at the centre


def test_posterior_sample_encoder_samples():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, latent_channels=4,
                        layers_per_block=1).eval()
    images = torch.rand(2, 16, 16, 3)
    a = D.posterior_sample_encoder(vae, torch.Generator().manual_seed(5))(images)
    b = D.posterior_sample_encoder(vae, torch.Generator().manual_seed(5))(images)
    c = D.posterior_sample_encoder(vae, torch.Generator().manual_seed(6))(images)
    assert a.shape == (2, 4, 2, 2) and torch.equal(a, b) and not torch.equal(a, c)
    with torch.no_grad():
        dist = vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist
        expected = dist.sample(torch.Generator().manual_seed(5)) * vae.config.scaling_factor
    torch.testing.assert_close(a, expected)


def test_lgm_to_world_lines_up_view_0_and_centres_the_object():
    cams = orbit_cameras(24, 15.0, 2.0)
    poses = D.lgm_poses(cams)
    T = D.lgm_to_world(cams).double()
    render_cams = D.lgm_cameras(poses, 64)
    # LGM's render camera of view 0, moved into the world, is the pack's camera 0
    np.testing.assert_allclose((T @ render_cams.c2w[0].double()).numpy(), cams.c2w[0].double().numpy(), atol=1e-6)
    # LGM's origin (the object's centre) lands on the orbit's centre, its y axis along the world's up
    np.testing.assert_allclose(T[:3, 3].numpy(), np.zeros(3), atol=1e-6)
    assert torch.linalg.det(T[:3, :3]).item() == pytest.approx(1.0)
    # so a scene moved by T renders from camera 0 exactly as the LGM-frame scene from LGM's view 0
    from consistent_video.nodes.splats.render import render
    g = torch.Generator().manual_seed(0)
    scene = GaussianScene(means=torch.rand(200, 3, generator=g) - 0.5, scales=torch.full((200, 3), 0.05),
                          rotations=F.normalize(torch.randn(200, 4, generator=g), dim=-1),
                          opacities=torch.full((200,), 0.8), sh=rgb_to_sh_dc(torch.rand(200, 3, generator=g))[:, None])
    world_cams = CameraBatch(cams.c2w[:1], render_cams.K[:1], 64, 64)
    lgm_view = render(scene, render_cams[0:1], background=(0.5,) * 3, near=0.2, backend="torch")[0]
    world_view = render(scene.transformed(D.lgm_to_world(cams)), world_cams, background=(0.5,) * 3, near=0.2,
                        backend="torch")[0]
    assert (lgm_view - 0.5).abs().max() > 0.1  # the scene is in view
    torch.testing.assert_close(world_view, lgm_view, atol=1e-4, rtol=0)
