"""What would break on a GPU, checked on the CPU with the tiny models, fakes and mocked devices: where the VAE's
inputs go under offload, SDXL's VAE in fp16, offload's hooks during a run, the step hook's device syncs, fused LoRA
backups, the limits GPU memory sets, out-of-memory errors, ZeroGPU's durations and ahead-of-time graphs, and what
the start says about torch's CUDA build."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from pipelines import gpu
from pipelines.editing import through_the_vae
from pipelines.endpoints import LORA_GRID, MODE_ENDPOINTS, REFERENCE_STEPS, SWEEP
from pipelines.errors import StudioError
from pipelines.explore.forward import forward_noise
from pipelines.gpu import AheadOfTimeForward, GpuWork, call_signature, gpu_seconds
from pipelines.loader import device_report
from pipelines.lora.manager import host_copy
from pipelines.memory import FOOTPRINTS, check_fits, fitting_limits
from pipelines.previews import preview_images
from pipelines.request import GenerationRequest, NoiseRequest
from pipelines.settings import Limits
from pipelines.steps import with_step_hook
from pipelines.studio import Studio
from pipelines.vae import decode_latents

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PICTURE = Image.new("RGB", (32, 32), (200, 40, 40))


class Reached(Exception):
    """Raised by a spy once it has seen what it was placed to see."""


@contextmanager
def runs_on(pipe, device: str):
    """The pipeline as under model offload: its weights report the CPU, its models run on `device`."""
    patch = pytest.MonkeyPatch()
    patch.setattr(type(pipe), "_execution_device", property(lambda self: torch.device(device)))
    try:
        yield
    finally:
        patch.undo()


def first_input_device(module: torch.nn.Module, action) -> torch.device:
    seen = []

    def spy(_, args):
        seen.append(args[0].device)
        raise Reached

    handle = module.register_forward_pre_hook(spy)
    try:
        with pytest.raises(Reached):
            action()
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture
def pipe(tiny_sd_dir):
    loaded = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


# ------------------------------------------------------------------ 3: the VAE's inputs on the execution device


def test_the_no_step_edit_sends_its_image_where_the_vae_runs_not_where_it_rests(pipe):
    with runs_on(pipe, "meta"):
        assert first_input_device(pipe.vae.encoder, lambda: through_the_vae(pipe, PICTURE)).type == "meta"


def test_forward_noising_sends_its_image_where_the_vae_runs(tiny_studio):
    request = NoiseRequest(PICTURE, "cosine", 500, 1)
    with runs_on(tiny_studio.base, "meta"):
        device = first_input_device(tiny_studio.base.vae.encoder, lambda: forward_noise(tiny_studio, request))
    assert device.type == "meta"


def test_a_preview_decodes_where_the_vae_runs(pipe):
    latents = torch.zeros(1, 4, 8, 8)
    with runs_on(pipe, "meta"):
        device = first_input_device(pipe.vae.decoder, lambda: preview_images(pipe, latents, "embedded"))
    assert device.type == "meta"


# ------------------------------------------------------------------ 7: SDXL's VAE is not run in fp16


def vae_dtypes(vae, action) -> list[torch.dtype]:
    seen = []
    handles = [part.register_forward_pre_hook(lambda module, args: seen.append(module.conv_in.weight.dtype))
               for part in (vae.encoder, vae.decoder)]
    try:
        action()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_an_upcasting_vae_in_fp16_encodes_and_decodes_in_fp32_and_is_fp16_again_after(pipe):
    pipe.vae.to(torch.float16)
    pipe.vae.register_to_config(force_upcast=True)  # SDXL's own VAE, when the fp16-fix VAE could not load
    seen = vae_dtypes(pipe.vae, lambda: through_the_vae(pipe, PICTURE))
    assert seen == [torch.float32, torch.float32] and pipe.vae.dtype == torch.float16
    assert vae_dtypes(pipe.vae, lambda: decode_latents(pipe, torch.zeros(1, 4, 8, 8))) == [torch.float32]


# ------------------------------------------------------------------ 11: offload's hooks during a run


class OffloadHook:
    """Acts as accelerate's CpuOffload on the VAE: before it runs, the model before it (the UNet) is offloaded."""

    def __init__(self) -> None:
        self.execution_device = torch.device("cpu")
        self.prev_module_hook = SimpleNamespace(offloads=0)
        self.prev_module_hook.offload = lambda: setattr(self.prev_module_hook, "offloads",
                                                        self.prev_module_hook.offloads + 1)

    def pre_forward(self, module, *args, **kwargs):
        if self.prev_module_hook is not None:
            self.prev_module_hook.offload()
        return args, kwargs


def test_decoding_during_a_run_leaves_the_unet_on_the_gpu_under_offload(pipe):
    hook = OffloadHook()
    unet_hook = hook.prev_module_hook
    pipe.vae._hf_hook = hook
    latents = torch.zeros(1, 4, 8, 8)
    preview_images(pipe, latents, "embedded")  # a preview decoded by the VAE: the embedded model's
    decode_latents(pipe, latents, mid_run=True)  # a timeline frame
    assert unet_hook.offloads == 0 and hook.prev_module_hook is unet_hook
    decode_latents(pipe, latents)  # after the run (forward noising): the hook does as it always did
    assert unet_hook.offloads == 1


def test_a_timeline_moves_the_unet_off_the_gpu_only_for_the_pipelines_own_last_decode(tiny_studio):
    from pipelines.explore.timeline import run_timeline
    from pipelines.request import TimelineRequest

    studio = Studio(tiny_studio.settings)
    hook = studio.base.vae._hf_hook = OffloadHook()
    request = GenerationRequest(mode="text", prompt="a red circle", steps=4, seed=2)
    frames = run_timeline(studio, TimelineRequest(request, keep_every=1)).frames
    assert len(frames) == 4 and hook.prev_module_hook.offloads == 1  # 8 frame decodes, and the run's own


# ------------------------------------------------------------------ 10: no device sync on steps nobody looks at


class DeviceTimestep:
    """A timestep as a GPU hands it over: reading it as a number would wait for the device."""

    def __float__(self):
        raise AssertionError("the timestep was read as a number")

    __int__ = __index__ = item = __float__


def test_the_step_hook_reads_neither_timestep_nor_x0_unless_a_hook_asks():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    pipe = SimpleNamespace(scheduler=scheduler, num_timesteps=10)
    steps = []
    on_step_end = with_step_hook(None, pipe, steps.append)
    sample = torch.randn(1, 4, 8, 8)
    pipe.scheduler.step(torch.randn(1, 4, 8, 8), scheduler.timesteps[0], sample)
    on_step_end(pipe, 0, DeviceTimestep(), {"latents": sample})
    assert steps[0].index == 1 and "predicted_x0" not in vars(steps[0])  # not computed until read
    assert steps[0].predicted_x0.shape == sample.shape


# ------------------------------------------------------------------ 9: fused LoRA backups in CPU memory


class GpuWeight:
    """Stands for a CUDA tensor: records where copies of it are made."""

    device = torch.device("cuda")

    def __init__(self) -> None:
        self.copies: list[str] = []

    def detach(self):
        return self

    def clone(self):
        self.copies.append("cuda")
        return self

    def to(self, device, copy=False):
        self.copies.append(str(device))
        return SimpleNamespace(pin_memory=lambda: ("pinned", str(device)))


def test_fused_lora_backups_are_kept_in_pinned_cpu_memory_not_on_the_gpu():
    weight = GpuWeight()
    assert host_copy(weight) == ("pinned", "cpu") and weight.copies == ["cpu"]
    on_cpu = torch.ones(3)
    kept = host_copy(on_cpu)
    assert torch.equal(kept, on_cpu) and kept.data_ptr() != on_cpu.data_ptr() and not kept.is_pinned()


# ------------------------------------------------------------------ 4: what GPU memory holds


def test_sdxl_on_a_16_gb_card_serves_less_than_the_settings_allow_and_says_so():
    limits, note = fitting_limits(Limits(), "sdxl", 15.0, 1024, 8)
    assert limits.max_images < 4 and 1024 <= limits.side_for(1024) < 2048
    assert "15 GiB" in note and "STUDIO_MAX_IMAGES" in note
    assert FOOTPRINTS["sdxl"].needed(limits.max_images, 1024, 1024, 1024) <= 15.0
    roomy, note = fitting_limits(Limits(), "sdxl", 79.0, 1024, 8)  # an H100
    assert roomy == Limits() and note == ""
    assert fitting_limits(Limits(), "sdxl", None, 1024, 8) == (Limits(), "")  # the CPU: the settings decide
    assert fitting_limits(Limits(), "embedded", 15.0, 64, 8) == (Limits(), "")


def test_more_gpu_memory_never_serves_less():
    served = [fitting_limits(Limits(), "sdxl", memory, 1024, 8)[0] for memory in (12, 16, 24, 40, 48, 80)]
    assert [limit.max_images for limit in served] == sorted(limit.max_images for limit in served)
    assert [limit.side_for(1024) for limit in served] == sorted(limit.side_for(1024) for limit in served)


def test_images_and_size_that_fit_apart_but_not_together_are_refused_by_name():
    limits, _ = fitting_limits(Limits(), "sdxl", 22.0, 1024, 8)
    with pytest.raises(StudioError, match=r"num_images; \d fit at this size.*width, height"):
        check_fits("sdxl", 22.0, limits.max_images, limits.max_side, limits.max_side, 1024)
    check_fits("sdxl", 22.0, 1, 1024, 1024, 1024)
    check_fits("sdxl", None, 4, 2048, 2048, 1024)


def test_out_of_memory_becomes_a_message_the_cache_is_freed_and_the_studio_serves_on(tiny_studio, monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    request = GenerationRequest(mode="text", prompt="a red circle", steps=2, seed=1, num_images=2)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_studio, "_run", out_of_memory)
        with pytest.raises(StudioError, match=r"2 images of 32x32 did not fit in the GPU's memory: lower the number"):
            tiny_studio.generate(request)
    assert freed == [True] and not tiny_studio.lock.locked()
    assert len(tiny_studio.generate(request).images) == 2


# ------------------------------------------------------------------ 5: ZeroGPU durations and what loads before the fork


def test_controlnets_loras_and_detectors_add_to_the_declared_gpu_time():
    plain = GpuWork(denoising_steps=20, width=512, height=512)
    text = gpu_seconds(plain)
    controlled = gpu_seconds(replace(plain, controlnets=1))
    detected = gpu_seconds(replace(plain, controlnets=1, detectors=1))
    two_units = gpu_seconds(replace(plain, controlnets=2, detectors=2))
    assert text < controlled < detected < two_units
    with_lora = gpu_seconds(replace(plain, loras=("stripes",)))
    assert text < with_lora < gpu_seconds(replace(plain, loras=("stripes", "mono")))
    assert with_lora < gpu_seconds(replace(plain, loras=("hub:someone/style",)))


def test_an_endpoints_gpu_time_is_read_off_its_checked_request(tiny_studio):
    """The duration ZeroGPU is told comes from the request as the studio will run it: the LoRAs it parses, its
    ControlNets and detectors, a grid's cells, a sweep's images with their references; a request it refuses gets
    the fallback."""
    served = tiny_studio.served

    def work(endpoint, **arguments) -> GpuWork:
        request, _ = endpoint.validate(endpoint.request(arguments), served)
        return endpoint.work(request)

    text = work(MODE_ENDPOINTS["text"], prompt="a circle", steps=20, num_images=2, loras="stripes:0.8, hub:a/b:1")
    assert (text.denoising_steps, text.controlnets, text.detectors) == (40, 0, 0)
    assert text.loras == ("stripes", "hub:a/b")
    unit = {"mode": "depth", "image": "map.png", "preprocessor": "depth_anything"}
    edge = work(MODE_ENDPOINTS["edge"], image="map.png", preprocessor="none", control_units=[unit], steps=20)
    assert (edge.controlnets, edge.detectors) == (2, 1)
    grid = work(LORA_GRID, lora_names=["a.safetensors"], weights="0.5, 1", seeds="1, 2", prompt="x", steps=20)
    assert grid.denoising_steps == 20 * 3 * 2 and grid.loras == ("a.safetensors",)  # baseline and two rows, by 2
    steps = work(SWEEP, sweep="steps", step_counts="10, 20", prompt="x")
    samplers = work(SWEEP, sweep="samplers", step_counts="10, 20", prompt="x")
    assert steps.denoising_steps == 10 + 20 + REFERENCE_STEPS and samplers.denoising_steps == 2 * steps.denoising_steps
    assert gpu_seconds(text) < MODE_ENDPOINTS["text"].gpu_seconds({"prompt": "x", "loras": "a:1, b:1, hub:c/d:1"},
                                                                  served)
    for refused in ({"steps": float("nan")}, {"steps": "many"}, {"loras": ["not", "text"]}, {"width": 10**9}):
        assert MODE_ENDPOINTS["text"].gpu_seconds({"prompt": "x", **refused}, served) == gpu.FALLBACK_SECONDS


def test_on_zerogpu_every_controlnet_the_registry_names_loads_before_the_fork(tiny_studio, monkeypatch):
    monkeypatch.setattr("pipelines.studio.on_zero_gpu", lambda: True)
    detectors = []
    monkeypatch.setattr("pipelines.studio.load_detectors", lambda sources: detectors.append(sources) or [])
    studio = Studio(tiny_studio.settings)
    assert set(studio.controlnets._loaded) == set(studio.controlnets.registry.values())
    assert detectors == [studio.detectors] and studio.detectors.device == studio.device  # detectors run there too
    monkeypatch.setattr("pipelines.studio.on_zero_gpu", lambda: False)
    assert not Studio(tiny_studio.settings).controlnets._loaded  # elsewhere they load on first use


# ------------------------------------------------------------------ 6: ahead-of-time graphs and timestep dtypes


def test_an_ahead_of_time_graph_is_not_fed_a_timestep_of_another_dtype(pipe):
    sample, states = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32)
    int_step, float_step = torch.tensor(981), torch.tensor(981.0)
    exported = call_signature((sample, int_step), {"encoder_hidden_states": states})
    forward = AheadOfTimeForward(pipe.unet, lambda *a, **k: "compiled", exported, lambda: False)
    assert forward.fits((sample, torch.tensor(1)), {"encoder_hidden_states": states})
    assert not forward.fits((sample, float_step), {"encoder_hidden_states": states})
    assert not forward.fits((sample, int_step), {"encoder_hidden_states": states.to(torch.float64)})


def test_the_graph_is_exported_from_a_run_with_the_studios_default_sampler(pipe, monkeypatch):
    import spaces

    used = []

    @contextmanager
    def capture(unet):
        used.append(type(pipe.scheduler).__name__)
        yield SimpleNamespace(args=(torch.zeros(1), torch.tensor(1)), kwargs={})

    monkeypatch.setattr(gpu, "GPU", lambda duration: (lambda task: task))
    monkeypatch.setattr(spaces, "aoti_capture", capture, raising=False)
    monkeypatch.setattr(spaces, "aoti_compile", lambda exported: "compiled", raising=False)
    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: "exported")
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *args, **kwargs: None)
    served = pipe.scheduler
    gpu.compile_unet_ahead_of_time(pipe, 32, lambda: False, DDIMScheduler.from_config(served.config))
    assert used == ["DDIMScheduler"] and pipe.scheduler is served
    assert isinstance(pipe.unet.forward, AheadOfTimeForward)


# ------------------------------------------------------------------ 14: what the start says about torch and the device


@pytest.mark.parametrize(
    ("cuda_build", "seen", "device", "warned"),
    [
        ("13.0", False, "cpu", "driver"),  # a CUDA 13 wheel on an older driver falls back to the CPU
        (None, False, "cpu", "CPU-only build"),
        ("12.8", True, "cpu", "STUDIO_DEVICE"),
        ("12.8", True, "cuda", None),
    ],
)
def test_a_stable_diffusion_model_on_the_cpu_is_said_with_the_reason(cuda_build, seen, device, warned):
    line, note = device_report(device, "sdxl", "2.14.1", cuda_build, seen)
    assert "2.14.1" in line and (f"CUDA {cuda_build} build" if cuda_build else "CPU-only build") in line
    assert (warned in note) if warned else note == ""


def test_the_embedded_model_on_the_cpu_is_no_warning():
    assert device_report("cpu", "embedded", "2.14.1", None, False)[1] == ""


def test_the_studio_puts_the_device_note_on_the_page(tiny_studio):
    assert tiny_studio.model.family == "sd15" and tiny_studio.device == "cpu"
    assert any("runs on the CPU in fp32" in note for note in tiny_studio.notes)
