"""The Explore tab's measured truths, on the committed embedded model served by the studio.

Forward noising, the denoising timeline, the sweeps and the live previews all run through the studio as a person
gets them. Step counts are the smallest each truth allows, so the file runs in well under a minute.
"""

from __future__ import annotations

import cv2
import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from embedded import evaluation, world
from pipelines.explore import figures
from pipelines.explore.forward import SCHEDULES, forward_noise
from pipelines.explore.sweeps import COLOUR_ERROR, DISTANCE, SATURATION, run_sweep
from pipelines.explore.timeline import run_timeline
from pipelines.previews import Previewer
from pipelines.request import GenerationRequest, NoiseRequest, SweepRequest, TimelineRequest
from pipelines.steps import DenoisingStep
from ui.explore import alpha_bar_frame, log_snr_frame
from ui.modes import run_request

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAST_T = 999
# The schedules as their papers and model cards publish them, built here without the app's table.
PUBLISHED = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
SHAPE_PROMPTS = [
    "a red circle on a blue background",
    "a yellow square on a purple background",
    "a green triangle on a white background",
    "a blue square on an orange background",
]
GUIDANCE = "1, 2, 4, 8, 12"


@pytest.fixture(scope="module")
def studio():
    return evaluation.load()


@pytest.fixture(scope="module")
def scenes() -> list[Image.Image]:
    return [Image.fromarray(world.make_scene(seed, "object").image) for seed in (5, 8)]


def noised(studio, image, schedule: str, t: int):
    return forward_noise(studio, NoiseRequest(image, schedule, t, seed=0))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def high_frequency_energy(image: Image.Image) -> float:
    """Mean absolute Laplacian of the luma: pixel-to-pixel noise makes it large, flat colour small."""
    luma = cv2.cvtColor(pixels(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(luma, cv2.CV_32F)).mean())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_at_t0_forward_noising_returns_the_image_within_a_vae_round_trip(studio, scenes, schedule):
    result = noised(studio, scenes[0], schedule, 0)
    original = pixels(scenes[0])
    # t = 0 is one step of noise already: its standard deviation in pixel levels (3.7 for Stable Diffusion's
    # schedule, 1.3 for DDPM's) bounds the mean difference in pixel space.
    noise_levels = 127.5 * (1 - result.alpha_bar) ** 0.5
    assert figures.pixel_distance(pixels(result.pixel_view), original) < max(1.0, noise_levels)
    assert figures.pixel_distance(pixels(result.latent_view), original) < 4  # the round trip measured 1.9 here


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_at_the_last_timestep_the_latent_is_standard_noise_and_the_picture_keeps_no_trace(studio, scenes, schedule):
    first, second = (noised(studio, scene, schedule, LAST_T) for scene in scenes)
    assert abs(first.latent_mean) < 0.1 and 0.9 < first.latent_std < 1.1
    # Same noise, different images: what is left of the image is what tells the two pictures apart.
    apart = figures.pixel_distance(pixels(scenes[0]), pixels(scenes[1]))
    left = figures.pixel_distance(pixels(first.latent_view), pixels(second.latent_view))
    # Stable Diffusion's scaled linear schedule keeps sqrt(alpha-bar) = 0.07 of the latents at t = 999 (measured
    # 8% of the difference here); the linear and cosine schedules keep under 1%.
    assert left < (0.1 if schedule == "scaled linear" else 0.02) * apart, (left, apart)


def test_the_plotted_alpha_bar_curves_are_the_schedulers_own_and_fall(studio):
    t = 321
    frame = alpha_bar_frame(t)
    snr = log_snr_frame(t)
    for name, config in PUBLISHED.items():
        own = DDPMScheduler(num_train_timesteps=1000, **config).alphas_cumprod.double().numpy()
        plotted = frame[frame.curve == name].sort_values("t")
        assert np.array_equal(plotted.t.to_numpy(), np.arange(1000))
        assert np.allclose(plotted["alpha-bar"].to_numpy(), own, rtol=1e-6, atol=0)
        assert np.all(np.diff(plotted["alpha-bar"].to_numpy()) < 0)
        logged = snr[snr.curve == name].sort_values("t")["log10 SNR"].to_numpy()
        assert np.allclose(logged, np.log10(own / (1 - own)), atol=1e-4)
    marker = frame[frame.curve == f"t = {t}"]
    assert list(marker.t) == [t, t]


@pytest.fixture(scope="module")
def timeline(studio):
    request = GenerationRequest(prompt=SHAPE_PROMPTS[0], seed=11, steps=20)
    return run_timeline(studio, TimelineRequest(request, keep_every=2)), request


def test_timeline_frames_grow_cleaner_step_by_step(timeline):
    frames = timeline[0].frames
    assert [frame.step for frame in frames] == list(range(2, 21, 2))
    energy = [high_frequency_energy(frame.latent) for frame in frames]
    assert all(later <= earlier * 1.02 for earlier, later in zip(energy, energy[1:])), energy
    assert energy[-1] < 0.25 * energy[0], energy
    assert all(frame.predicted is not None for frame in frames)


def test_the_timelines_last_frame_is_the_text_tabs_image(studio, timeline):
    result, request = timeline
    *_, last = run_request(studio, request)  # the Text tab's handler; its last output is the result
    gallery = last[0]
    assert np.array_equal(pixels(result.frames[-1].latent), pixels(gallery[0][0]))


def test_the_guidance_sweep_shows_the_sweet_spot_then_saturation_rises(studio):
    """One sweep per prompt, as a person runs it; the figures are averaged over the prompts, since one picture's
    colour error moves by a few RGB units from seed to seed."""
    results = [run_sweep(studio, SweepRequest(GenerationRequest(prompt=prompt, seed=3), "guidance scale", GUIDANCE))
               for prompt in SHAPE_PROMPTS]
    assert all(any(note.startswith("Sweet spot: guidance") for note in result.notes) for result in results)
    error = np.mean([[cell[COLOUR_ERROR] for cell in result.figures] for result in results], axis=0)
    saturation = np.mean([[cell[SATURATION] for cell in result.figures] for result in results], axis=0)
    best = int(np.argmin(error))
    scales = [float(value) for value in GUIDANCE.split(",")]
    print(f"\nguidance {scales}\ncolour error (RGB) {np.round(error, 1)}\n"
          f"saturated (% of pixel values at 0 or 255) {np.round(100 * saturation, 2)}")
    assert scales[best] < scales[-1] and error[-1] > error[best]  # colour accuracy peaks, then falls
    assert saturation[-1] > 2 * saturation[best]  # past the peak, saturation rises


def test_ddim_at_20_steps_is_closer_to_its_50_step_image_than_ddpm(studio):
    for prompt in SHAPE_PROMPTS[:2]:
        result = run_sweep(studio, SweepRequest(GenerationRequest(prompt=prompt, seed=4), "samplers", step_counts="20"))
        distance = {cell["row"]: cell[DISTANCE] for cell in result.figures}
        print(f"\n{prompt}: distance to the 50-step image at 20 steps {distance}")
        assert distance["DDIM"] < distance["DDPM"]


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a", "DPM++ 2M"])
def test_previews_never_change_the_final_image(studio, scheduler):
    """A preview at every step (no time budget); Euler a draws fresh noise from the run's generator at every step."""
    request = GenerationRequest(prompt=SHAPE_PROMPTS[1], seed=7, steps=8, scheduler=scheduler)
    previews = []
    every_step = Previewer("embedded", previews.append, share=float("inf"), interval=0.0)
    previewed = studio.generate(request, on_step=every_step)
    plain = studio.generate(request)
    assert len(previews) == 7  # every step but the last
    assert np.array_equal(pixels(previewed.images[0]), pixels(plain.images[0]))


def test_the_text_tab_shows_a_preview_before_the_image(studio):
    """A run long enough to watch (about 1.5 s here); shorter ones end before the first preview is due."""
    outputs = list(run_request(studio, GenerationRequest(prompt=SHAPE_PROMPTS[2], seed=2, steps=90)))
    *running, final = outputs
    # Between previews a run yields nothing new (skips), so that a cancel reaches it (ui/live.py).
    previews = [output for output in running if output[0].get("label")]
    assert all(output == (gr.skip(),) * 4 for output in running if output not in previews)
    assert previews and all(output[0]["label"].startswith("Preview, step") for output in previews)
    assert all(len(output[0]["value"]) == 1 for output in previews)  # one preview per image
    assert [caption for _, caption in final[0]] == ["seed 2"]  # the last output is the result


def test_previews_come_no_sooner_than_their_interval():
    """Steps of 0.1 s: with a 0.5 s interval the first preview is at 0.5 s, then at most one every 0.5 s."""
    now = [0.0]
    sent = []
    previewer = Previewer("sd15", lambda preview: sent.append(preview.step), share=1.0, clock=lambda: now[0],
                          interval=0.5)
    for index in range(1, 21):
        now[0] += 0.1
        previewer(DenoisingStep(index, 20, 0.0, torch.zeros(1, 4, 2, 2), pipe=None))
    assert sent[0] == 5 and len(sent) == 3 and all(later - earlier >= 5 for earlier, later in zip(sent, sent[1:]))


def test_previews_take_at_most_their_share_of_the_time():
    """A clock that advances 10 s a step and 3 s a preview: with a 10% share, about one step in three previews."""
    now = [0.0]
    sent = []

    def send(preview):
        now[0] += 3.0
        sent.append(preview.step)

    previewer = Previewer("sd15", send, share=0.1, clock=lambda: now[0], interval=0.0)
    for index in range(1, 31):
        now[0] += 10.0
        previewer(DenoisingStep(index, 30, 0.0, torch.zeros(1, 4, 2, 2), pipe=None))
    assert 30 not in sent and 8 <= len(sent) <= 11, sent  # never the last step: the image itself comes next
    assert previewer.spent <= 0.1 * now[0]
