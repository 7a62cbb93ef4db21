"""The studio: one base pipeline, one pipeline per mode built from it, and `generate(request)`.

Every mode's pipeline shares the base UNet, VAE, text encoder(s) and LoRA adapters (`from_pipe`);
ControlNets load lazily and stay cached, so switching modes never reloads the base.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from pipelines.controlnets import ControlNetCache, controlnet_registry
from pipelines.images import prepare_user_image
from pipelines.loader import load_base_pipeline, pick_device
from pipelines.lora import LoraManager
from pipelines.metadata import format_parameters, tag_with_parameters
from pipelines.preprocessors import PreprocessOptions, make_control_map
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.schedulers import make_scheduler
from pipelines.settings import Settings
from pipelines.validation import validate_request

Progress = Callable[[int, int], None]


class Studio:
    def __init__(self, settings: Settings, controlnet_overrides: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.device, self.dtype = pick_device(settings.device)
        self.base, self.model = load_base_pipeline(settings.model, self.device, self.dtype)
        self._scheduler_config = dict(self.base.scheduler.config)
        registry = controlnet_registry(self.model.family, self.model.controlnets, controlnet_overrides)
        self.controlnets = ControlNetCache(registry, self.device, self.dtype)
        self.loras = LoraManager(self.base, self.model.family, settings.lora_dir)
        self._mode_pipes: dict[str, DiffusionPipeline] = {"text": self.base}
        # One generation at a time: LoRA weights and the scheduler live on the shared modules.
        self._lock = threading.Lock()

    @property
    def size_multiple(self) -> int:
        return self.base.vae_scale_factor

    def pipeline_for(self, mode: str) -> DiffusionPipeline:
        if mode not in self._mode_pipes:
            controlnet = self.controlnets.get(mode)
            # from_pipe casts shared modules to fp32 unless told the dtype (diffusers #12754).
            pipe = AutoPipelineForText2Image.from_pipe(self.base, controlnet=controlnet, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._mode_pipes[mode] = pipe
        return self._mode_pipes[mode]

    def generate(self, request: GenerationRequest, progress: Progress | None = None) -> GenerationResult:
        request, notes = validate_request(request, self.model, self.settings.limits, self.size_multiple)
        control_map = self._control_map(request) if request.mode != "text" else None
        with self._lock:
            pipe = self.pipeline_for(request.mode)
            notes += self.loras.activate(request.loras)
            notes += self._prompt_notes(request)
            pipe.scheduler = make_scheduler(request.scheduler, self._scheduler_config)
            images = self._run(pipe, request, control_map, progress)
        seeds = [request.seed + index for index in range(request.num_images)]
        parameters = [self._parameters(request, seed) for seed in seeds]
        tagged = [tag_with_parameters(image, text) for image, text in zip(images, parameters, strict=True)]
        return GenerationResult(tagged, seeds, parameters, request, control_map, notes)

    def _control_map(self, request: GenerationRequest) -> Image.Image:
        image = prepare_user_image(
            request.image,
            max_pixels=self.settings.limits.max_input_pixels,
            what=f"{request.mode} image",
        )
        options = PreprocessOptions(
            low_threshold=request.low_threshold,
            high_threshold=request.high_threshold,
            include_hands=request.include_hands,
            include_face=request.include_face,
            detect_resolution=request.detect_resolution,
        )
        return make_control_map(request.mode, request.preprocessor, image, (request.width, request.height), options)

    def _run(
        self,
        pipe: DiffusionPipeline,
        request: GenerationRequest,
        control_map: Image.Image | None,
        progress: Progress | None,
    ) -> list[Image.Image]:
        generators = [
            torch.Generator("cpu").manual_seed(request.seed + index) for index in range(request.num_images)
        ]
        kwargs = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            num_images_per_prompt=request.num_images,
            generator=generators,
            callback_on_step_end=_progress_callback(progress, request.steps),
        )
        if control_map is not None:
            kwargs.update(
                image=control_map,
                controlnet_conditioning_scale=request.controlnet_scale,
                control_guidance_start=request.control_start,
                control_guidance_end=request.control_end,
            )
        return pipe(**kwargs).images

    def _prompt_notes(self, request: GenerationRequest) -> list[str]:
        """The text encoder reads 77 tokens; say what was cut rather than drop it silently."""
        notes = []
        tokenizer = self.base.tokenizer
        for name, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
            ids = tokenizer(text, truncation=False, add_special_tokens=False).input_ids
            room = tokenizer.model_max_length - 2
            if len(ids) > room:
                cut = tokenizer.decode(ids[room:])
                notes.append(f"The {name} is {len(ids)} tokens long; the model reads {room}, so this was cut: {cut!r}.")
        return notes

    def _parameters(self, request: GenerationRequest, seed: int) -> str:
        settings: dict[str, object] = {
            "Steps": request.steps,
            "Sampler": request.scheduler,
            "CFG scale": request.guidance_scale,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model": self.model.name,
            "Mode": request.mode,
        }
        if request.mode != "text":
            settings["ControlNet 0"] = (
                f"Module: {request.preprocessor}, Model: {self.controlnets.registry[request.mode]}, "
                f"Weight: {request.controlnet_scale:g}, Guidance Start: {request.control_start:g}, "
                f"Guidance End: {request.control_end:g}"
            )
        settings["Version"] = "diffusion-studio"
        loras = [(lora.name, lora.weight) for lora in request.loras]
        return format_parameters(request.prompt, request.negative_prompt, settings, loras)


def _progress_callback(progress: Progress | None, total: int):
    if progress is None:
        return None

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        progress(step + 1, total)
        return callback_kwargs

    return on_step_end
