"""VideoMV's samplers as diffusers schedulers, and the per-mode defaults of its scripts.

VideoMV samples with VGen's ``DiffusionDDIM.ddim_sample_loop``: DDIM, eta 0, 50 steps at
timesteps ``1 + {0, 20, ..., 980}`` reversed (981, 961, ..., 1), the last step's "previous"
alpha being ``alphabar[0]``, no clamping of the predicted x0. In diffusers terms that is
``DDIMScheduler(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
clip_sample=False)`` with, per mode:

- **T2V** (ModelScope-T2V based): VGen ``linear_sd`` betas, ``linspace(sqrt(0.00085),
  sqrt(0.012), 1000) ** 2`` = diffusers ``scaled_linear``; the UNet predicts **eps**.
- **I2V** (I2VGen-XL based): VGen ``cosine`` betas (improved-DDPM alphabar
  ``cos((t + 0.008) / 1.008 * pi/2) ** 2``, each beta clipped at 0.999, which only the last
  one reaches: it would be 1.0) rescaled to zero terminal SNR (Lin et al. 2023, alg. 1) =
  diffusers ``squaredcos_cap_v2`` + ``rescale_betas_zero_snr``; the UNet predicts **v**.

diffusers builds the betas in float32 where VGen uses float64; ``alphas_cumprod`` agree to
about 1e-7.
"""
from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDIMScheduler

NUM_VIEWS = 24  # views per orbit (VideoMV's max_frames)
RESOLUTION = 256  # square image size in pixels (latents 32x32)
NUM_STEPS = 50  # DDIM steps
NUM_TRAIN_TIMESTEPS = 1000
T2V_PROMPT_SUFFIX = ", 3d asset"


@dataclass(frozen=True)
class ModeDefaults:
    """The hard-coded settings of one VideoMV entrance script.

    Attributes:
        guidance: classifier-free guidance scale ``u + s (c - u)`` on the model output.
        elevation_deg: orbit elevation in degrees (camera above the object for > 0).
        distance: orbit radius in scene units (object at the origin).
    """

    guidance: float
    elevation_deg: float
    distance: float


T2V = ModeDefaults(guidance=9.0, elevation_deg=15.0, distance=2.0)
I2V = ModeDefaults(guidance=6.0, elevation_deg=5.0, distance=1.7)
MODES = {"t2v": T2V, "i2v": I2V}


def _ddim(**schedule) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, timestep_spacing="leading", steps_offset=1,
                         set_alpha_to_one=False, clip_sample=False, thresholding=False, **schedule)


def t2v_scheduler() -> DDIMScheduler:
    """VideoMV's text-to-multiview sampler: DDIM over scaled-linear betas (0.00085 to
    0.012, 1000 steps), epsilon prediction. Call ``set_timesteps(NUM_STEPS)`` to get
    timesteps 981, 961, ..., 1; use eta 0 and guidance ``T2V.guidance``."""
    return _ddim(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon")


def i2v_scheduler() -> DDIMScheduler:
    """VideoMV's image-to-multiview sampler: DDIM over the cosine schedule (s = 0.008, betas
    clipped at 0.999) rescaled to zero terminal SNR, v prediction. Call
    ``set_timesteps(NUM_STEPS)`` to get timesteps 981, 961, ..., 1; use eta 0 and guidance
    ``I2V.guidance``."""
    return _ddim(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True, prediction_type="v_prediction")


def t2v_prompt(prompt: str) -> str:
    """The prompt as VideoMV's T2V script feeds it: ``T2V_PROMPT_SUFFIX`` appended unless
    the prompt already contains "3d asset"."""
    return prompt if "3d asset" in prompt else prompt + T2V_PROMPT_SUFFIX
