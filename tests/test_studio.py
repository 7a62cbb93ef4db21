"""The studio end to end on a tiny model: modes, shared weights, schedulers, seeds, metadata, refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from diffusers import ControlNetModel
from PIL import Image, ImageDraw

from pipelines import studio as studio_module
from pipelines.endpoints import validate_request
from pipelines.errors import StudioError
from pipelines.metadata import parse_parameters
from pipelines.request import GenerationRequest
from pipelines.schedulers import scheduler_names
from pipelines.settings import Settings
from pipelines.studio import Studio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(prompt="a red circle on a blue background", steps=2, seed=7, preprocessor="none")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def circle_map(center: tuple[int, int], radius: int, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    x, y = center
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), outline="white", width=2)
    return image


@pytest.mark.parametrize("mode", ["text", "pose", "edge", "depth"])
def test_every_mode_makes_images_at_the_requested_size(tiny_studio, mode):
    control = None if mode == "text" else circle_map((16, 16), 8)
    request = GenerationRequest(mode=mode, image=control, width=48, height=32, num_images=2, **FAST)
    result = tiny_studio.generate(request)
    assert [image.size for image in result.images] == [(48, 32), (48, 32)]
    assert result.seeds == [7, 8]
    if mode == "text":
        assert result.control_map is None
    else:
        assert result.control_map.size == (48, 32)


def test_mode_pipelines_share_the_base_weights_and_load_each_controlnet_once(tiny_studio, monkeypatch):
    studio = Studio(tiny_studio.settings)  # fresh: no mode pipeline built yet, so every guard below can fire
    base = studio.base
    loads = []
    original = ControlNetModel.from_pretrained.__func__
    monkeypatch.setattr(
        ControlNetModel, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k))
    )
    # The name the studio looks the loader up by: a base reload on a mode switch would go through it.
    monkeypatch.setattr(studio_module, "load_base_pipeline", lambda *a, **k: pytest.fail("base reloaded"))
    for mode in ["edge", "text", "pose", "edge", "depth", "pose", "text"]:
        request = GenerationRequest(mode=mode, image=circle_map((12, 12), 6), **FAST)
        studio.generate(request)
        pipe = studio.pipeline_for(mode)
        assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
    assert len(loads) == 3  # one load per control mode
    assert len({id(studio.pipeline_for(mode).controlnet) for mode in ["pose", "edge", "depth"]}) == 3


def test_the_control_image_changes_the_result(tiny_studio):
    first = tiny_studio.generate(GenerationRequest(mode="edge", image=circle_map((10, 10), 5), **FAST))
    second = tiny_studio.generate(GenerationRequest(mode="edge", image=circle_map((22, 20), 8), **FAST))
    assert np.abs(pixels(first.images[0]) - pixels(second.images[0])).mean() > 1.0


def test_whole_numbers_from_sliders_and_json_are_accepted_for_float_settings(tiny_studio):
    request = GenerationRequest(
        mode="edge", image=circle_map((16, 16), 8), controlnet_scale=1, control_start=0, control_end=1,
        guidance_scale=3, **FAST,
    )
    assert tiny_studio.generate(request).images


def test_conditioning_scale_zero_ignores_the_control_image(tiny_studio):
    runs = [
        tiny_studio.generate(
            GenerationRequest(mode="edge", image=circle_map(center, 6), controlnet_scale=0.0, **FAST)
        )
        for center in [(10, 10), (22, 20)]
    ]
    assert np.array_equal(pixels(runs[0].images[0]), pixels(runs[1].images[0]))


@pytest.mark.parametrize("name", scheduler_names())
def test_every_scheduler_runs_and_is_recorded(tiny_studio, name):
    result = tiny_studio.generate(GenerationRequest(scheduler=name, **FAST))
    assert np.isfinite(pixels(result.images[0])).all()
    assert parse_parameters(result.parameters[0])["Sampler"] == name


def test_a_request_without_a_sampler_runs_the_one_the_model_names(tiny_studio, monkeypatch):
    assert parse_parameters(tiny_studio.generate(GenerationRequest(**FAST)).parameters[0])["Sampler"] == "Euler a"
    monkeypatch.setattr(tiny_studio, "model", replace(tiny_studio.model, default_scheduler="DDIM"))
    result = tiny_studio.generate(GenerationRequest(**FAST))
    assert parse_parameters(result.parameters[0])["Sampler"] == "DDIM" and result.request.scheduler == "DDIM"
    assert type(tiny_studio.pipeline_for("text").scheduler).__name__ == "DDIMScheduler"


def test_same_seed_same_image_and_each_batch_image_reproducible_alone(tiny_studio):
    batch = tiny_studio.generate(GenerationRequest(num_images=2, **FAST))
    again = tiny_studio.generate(GenerationRequest(num_images=2, **FAST))
    second_alone = tiny_studio.generate(GenerationRequest(**{**FAST, "seed": 8}))
    assert np.array_equal(pixels(batch.images[0]), pixels(again.images[0]))
    assert np.array_equal(pixels(batch.images[1]), pixels(second_alone.images[0]))
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))


def test_a_list_of_seeds_runs_in_batches_no_larger_than_the_image_limit(tiny_studio, monkeypatch):
    batches = []
    run = tiny_studio._run
    monkeypatch.setattr(tiny_studio, "_run", lambda *args: batches.append(list(args[-1])) or run(*args))
    seeds = [11, 3, 99, 4, 5, 6]
    result = tiny_studio.generate(GenerationRequest(**FAST), seeds=seeds)
    limit = tiny_studio.settings.limits.max_images
    assert batches == [seeds[:limit], seeds[limit:]] and result.seeds == seeds
    assert [parse_parameters(text)["Seed"] for text in result.parameters] == [str(seed) for seed in seeds]
    alone = tiny_studio.generate(GenerationRequest(**{**FAST, "seed": 99}))
    assert np.abs(pixels(result.images[2]).astype(int) - pixels(alone.images[0])).max() <= 1


def test_a_few_step_preset_sets_its_recipe_and_says_plainly_when_its_lora_is_not_here(tiny_studio):
    checked, notes = validate_request(GenerationRequest(**FAST, preset="LCM-LoRA"), tiny_studio.served)
    assert (checked.scheduler, checked.steps, checked.guidance_scale) == ("LCM", 4, 1.0)
    assert [choice.name for choice in checked.loras] == [
        "hub:latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"
    ]
    assert "Preset LCM-LoRA: 4 steps of LCM" in notes[0]
    with pytest.raises(StudioError, match="not in the local cache and the Hub cannot be reached"):
        tiny_studio.generate(GenerationRequest(**FAST, preset="TCD"))
    with pytest.raises(StudioError, match="Few-step preset"):
        validate_request(GenerationRequest(**FAST, preset="Fast"), tiny_studio.served)  # the embedded model's


def test_random_seed_is_resolved_and_reported(tiny_studio):
    result = tiny_studio.generate(GenerationRequest(**{**FAST, "randomize_seed": True}))
    assert result.seeds[0] >= 0
    assert result.request.seed == result.seeds[0]
    replay = tiny_studio.generate(GenerationRequest(**{**FAST, "seed": result.seeds[0]}))
    assert np.array_equal(pixels(result.images[0]), pixels(replay.images[0]))


def test_images_carry_their_a1111_parameters(tiny_studio):
    request = GenerationRequest(
        mode="edge", image=circle_map((16, 16), 8), negative_prompt="green", scheduler="DDIM",
        guidance_scale=3.5, controlnet_scale=0.7, **FAST,
    )
    result = tiny_studio.generate(request)
    parsed = parse_parameters(result.images[0].info["parameters"])
    assert parsed["prompt"] == FAST["prompt"]
    assert parsed["negative_prompt"] == "green"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Seed"]) == ("2", "DDIM", "3.5", "7")
    assert parsed["Size"] == "32x32"
    assert "Weight: 0.7" in parsed["ControlNet 0"]


def test_long_prompt_is_cut_and_the_person_is_told(tiny_studio):
    result = tiny_studio.generate(GenerationRequest(**{**FAST, "prompt": "word " * 40}))
    assert any("cut" in note for note in result.notes)


def test_width_is_snapped_to_what_the_model_accepts(tiny_studio):
    result = tiny_studio.generate(GenerationRequest(width=33, **FAST))
    assert result.images[0].size == (32, 32)
    assert any("rounded" in note for note in result.notes)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10_000}, "steps"),
        ({"steps": 2.5}, "whole"),
        ({"guidance_scale": -1.0}, "guidance"),
        ({"guidance_scale": float("nan")}, "guidance"),
        ({"num_images": 50}, "number of images"),
        ({"width": 100_000}, "width"),
        ({"height": 0}, "height"),
        ({"seed": -5}, "seed"),
        ({"seed": 3.5}, "seed"),
        ({"seed": 2**40}, "seed"),
        ({"scheduler": "Heun++"}, "scheduler"),
        ({"mode": "sketch"}, "mode"),
        ({"controlnet_scale": 9.0}, "conditioning scale"),
        ({"control_start": 0.8, "control_end": 0.2}, "start"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x" * 5000}, "characters"),
    ],
)
def test_out_of_range_values_are_refused_with_a_clear_message(tiny_studio, change, words):
    request = GenerationRequest(mode="edge", image=circle_map((16, 16), 8), **FAST)
    with pytest.raises(StudioError, match=f"(?i){words}"):
        tiny_studio.generate(replace(request, **change))


@pytest.mark.parametrize("mode", ["pose", "edge", "depth"])
def test_control_mode_without_image_says_so(tiny_studio, mode):
    with pytest.raises(StudioError, match=f"No {mode} image"):
        tiny_studio.generate(GenerationRequest(mode=mode, **FAST))


def test_corrupt_upload_is_refused_and_the_studio_keeps_serving(tiny_studio, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(StudioError, match="broken.png"):
        tiny_studio.generate(GenerationRequest(mode="edge", image=str(broken), **FAST))
    assert tiny_studio.generate(GenerationRequest(**FAST)).images


@pytest.mark.parametrize("mode_name", ["RGBA", "LA", "L", "I;16", "F"])
def test_unusual_pixel_formats_are_accepted_as_control_maps(tiny_studio, mode_name, tmp_path):
    source = circle_map((16, 16), 8).convert("L")
    if mode_name == "I;16":
        source = Image.fromarray(np.asarray(source, dtype=np.uint16) * 257)
    else:
        source = source.convert(mode_name)
    result = tiny_studio.generate(GenerationRequest(mode="depth", image=source, **FAST))
    assert result.control_map.mode == "RGB"


def test_huge_image_is_refused_before_decoding(tiny_sd_dir, tiny_controlnet_dirs, empty_lora_dir, tmp_path):
    from pipelines.settings import Limits

    settings = Settings(
        model=str(tiny_sd_dir), lora_dir=str(empty_lora_dir), device="cpu", limits=Limits(max_input_pixels=64 * 64),
        controlnets=tiny_controlnet_dirs,
    )
    studio = Studio(settings)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(StudioError, match="limit"):
        studio.generate(GenerationRequest(mode="edge", image=str(big), **FAST))


def test_unreachable_hub_model_gives_a_plain_message(empty_lora_dir):
    settings = Settings(model="someone/model-that-is-not-cached", lora_dir=str(empty_lora_dir), device="cpu")
    with pytest.raises(StudioError, match="Hub"):
        Studio(settings)


def test_unreachable_hub_controlnet_fails_only_its_mode(tiny_sd_dir, empty_lora_dir):
    settings = Settings(model=str(tiny_sd_dir), lora_dir=str(empty_lora_dir), device="cpu")
    studio = Studio(settings)  # the default SD1.5 ControlNets live on the Hub
    with pytest.raises(StudioError, match="pose ControlNet 'lllyasviel/control_v11p_sd15_openpose'"):
        studio.generate(GenerationRequest(mode="pose", image=circle_map((16, 16), 8), **FAST))
    assert studio.generate(GenerationRequest(**FAST)).images


def test_a_stop_request_ends_the_run_at_the_next_step_and_the_next_run_works(tiny_studio):
    steps_seen = []

    def stop_after_two_steps() -> bool:
        return len(steps_seen) >= 2

    request = GenerationRequest(**{**FAST, "steps": 10})
    with pytest.raises(StudioError, match="Stopped"):
        tiny_studio.generate(
            request, progress=lambda step, total: steps_seen.append(step), should_stop=stop_after_two_steps
        )
    assert len(steps_seen) == 3  # the step under way when the stop came ended; the other seven were skipped
    assert tiny_studio.generate(request).images


def test_a_detector_without_its_weights_is_not_the_default(tiny_studio, tmp_path):
    from pipelines.endpoints import for_mode
    from pipelines.modes import MODES
    from pipelines.preprocessors import DetectorSources

    empty = replace(tiny_studio.served, detectors=DetectorSources(annotators=str(tmp_path)))
    served = for_mode(empty, MODES["pose"])
    assert served.preprocessors[0] == "none" and served.unavailable_preprocessors == ("openpose",)
    (tmp_path / "body_pose_model.pth").write_bytes(b"weights")
    assert for_mode(empty, MODES["pose"]).preprocessors[0] == "openpose"


def test_gpu_durations_grow_with_the_work():
    from pipelines.gpu import MAX_SECONDS, GpuWork, gpu_seconds

    small = gpu_seconds(GpuWork(denoising_steps=20, width=512, height=512))
    assert small < gpu_seconds(GpuWork(denoising_steps=40, width=512, height=512)) < gpu_seconds(
        GpuWork(denoising_steps=40, width=1024, height=1024)
    )
    assert gpu_seconds(GpuWork(denoising_steps=10**6)) == MAX_SECONDS

