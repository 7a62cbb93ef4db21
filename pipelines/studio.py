"""The studio: one base pipeline, one pipeline per mode built from it, and `generate(request)`.

Every mode's pipeline shares the base UNet, VAE, text encoder(s) and LoRA adapters (`from_pipe`);
ControlNets load lazily and stay cached, so switching modes never reloads the base.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from functools import partial

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionXLControlNetUnionImg2ImgPipeline,
    StableDiffusionXLControlNetUnionInpaintPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)
from PIL import Image

from pipelines.a1111 import (
    LORA_HASHES,
    SETTINGS,
    STUDIO_VERSION,
    STYLE_REFERENCE,
    STYLE_SETTINGS,
    VERSION,
    lora_hashes_text,
    written_settings,
)
from pipelines.acceleration import Accelerator, plan_acceleration, use_fp16_fix_vae
from pipelines.control import (
    UsedControl,
    control_kwargs,
    controls_of,
    maps_side_by_side,
    png_units,
    union_note,
)
from pipelines.controlnets import ControlNetCache, controlnet_registry
from pipelines.editing import EditInputs, denoises, edit_inputs, keep_unmasked, strength_of, through_the_vae
from pipelines.endpoints import validate_request
from pipelines.errors import StudioError
from pipelines.gpu import on_zero_gpu
from pipelines.images import prepare_user_image
from pipelines.loader import device_report, display_name, load_base_pipeline, pick_device
from pipelines.lora import LoraManager
from pipelines.lora.hashes import lora_hashes
from pipelines.memory import check_fits, fitting_limits, gpu_gib, out_of_memory_as_message
from pipelines.metadata import format_parameters, tag_with_parameters
from pipelines.modes import MODES, UNION
from pipelines.parameters import MAX_SEED, Served
from pipelines.preprocessors import load_detectors
from pipelines.presets import preset_names
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.schedulers import make_scheduler, scheduler_names
from pipelines.settings import Settings
from pipelines.steps import DenoisingStep, StepHook, with_step_hook
from pipelines.style import StyleReference, picture_hash, style_adapter_for
from pipelines.threads import set_cpu_threads

UNION_PIPELINES = {
    "": StableDiffusionXLControlNetUnionPipeline,
    "img2img": StableDiffusionXLControlNetUnionImg2ImgPipeline,
    "inpaint": StableDiffusionXLControlNetUnionInpaintPipeline,
}
logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


def steps_after(progress: Progress | None, done: int, total: int) -> Progress | None:
    """`progress` for one run of several: its steps count on from the `done` steps of the runs before it."""
    return None if progress is None else lambda step, _steps: progress(done + step, total)


def stop_if_asked(should_stop: ShouldStop | None) -> None:
    """Between the runs of a grid or sweep: a stop asked for since the last step ends the whole job."""
    if should_stop is not None and should_stop():
        raise StudioError("Stopped before the last image; the rest was not made.")


class Studio:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device, self.dtype = pick_device(settings.device)
        # GPU paths (pipelines/acceleration.py); `notes` say what was asked for and is off, for the page.
        speed = plan_acceleration(self.device, settings.speed, on_zero_gpu())
        self.base, self.model = load_base_pipeline(settings.model, self.device, self.dtype, offload=speed.offload)
        vae_note = use_fp16_fix_vae(self.base, speed, self.model.family, self.device, self.dtype)
        log_line, device_note = device_report(self.device, self.model.family, torch.__version__, torch.version.cuda,
                                              torch.cuda.is_available())
        logger.info(log_line)
        # Under offload only the running model holds GPU memory: the whole-model figures would be too strict there.
        self.gpu_gib = None if speed.offload else gpu_gib(self.device)
        self.limits, limits_note = fitting_limits(settings.limits, self.model.family, self.gpu_gib,
                                                  self.model.resolution, self.size_multiple)
        self.notes = [note for note in (*speed.notes, vae_note, device_note, limits_note) if note]
        if self.device == "cpu":
            set_cpu_threads(self.base.unet, settings.threads)
        self._scheduler_config = dict(self.base.scheduler.config)
        # The detectors run where the models do: inside a GPU call a detector takes milliseconds of GPU time
        # instead of seconds of CPU time.
        self.detectors = replace(settings.detectors, device=self.device)
        registry = controlnet_registry(self.model.family, self.model.controlnets, settings.controlnets)
        self.controlnets = ControlNetCache(registry, "cpu" if speed.offload else self.device, self.dtype)
        self.loras = LoraManager(
            self.base,
            self.model.family,
            settings.lora_dir,
            max_bytes=settings.loras.cache_bytes,
            max_file_bytes=settings.loras.file_bytes,
            max_upload_bytes=settings.loras.upload_bytes,
            slot_rank=speed.compile_lora_rank if speed.compile == "jit" else None,
            fuse=speed.fuse_loras,
        )
        adapter, why_none = style_adapter_for(self.model.family, self.model.source, self.model.style_adapter,
                                              settings.style_adapter, settings.style_encoder)
        self.style = StyleReference(adapter, why_none, self.base, self.device, self.dtype, compiled=bool(speed.compile))
        self.accelerator = Accelerator(speed, self.device, self.base, self.model.resolution)
        self.accelerator.compile(  # after the LoRA slot is in place
            lora_active=lambda: bool(self.loras.active),
            default_scheduler=make_scheduler(self.model.default_scheduler, self._scheduler_config),
        )
        # (what the mode edits, the ControlNets by mode) -> its pipeline, built from the base on first use
        self._pipes: dict[tuple[str, tuple[str, ...]], DiffusionPipeline] = {("", ()): self.base}
        # One generation at a time: LoRA weights and the scheduler live on the shared modules.
        self._lock = threading.Lock()
        if on_zero_gpu():
            self.load_before_the_fork()

    def load_before_the_fork(self) -> None:
        """Load every ControlNet the registry names, and the detectors whose weights are here, now. On ZeroGPU each
        call runs in a forked worker that has only what the main process loaded: what a call loads itself, it loads
        again in every new worker, on GPU time."""
        for mode in self.controlnets.registry:
            try:
                self.controlnets.get(mode)
            except StudioError as error:  # remembered, and said to whoever asks for that mode
                logger.warning("not loaded before the fork: %s", error)
        logger.info("detectors loaded before the fork: %s", ", ".join(load_detectors(self.detectors)) or "none")

    @property
    def lock(self) -> threading.Lock:
        """Held while a run uses the shared modules; hold it to use them directly (the Explore tab's VAE)."""
        return self._lock

    @property
    def size_multiple(self) -> int:
        # diffusers' text-to-image pipelines insist on multiples of 8 whatever the VAE's factor (the embedded
        # model's is 4), and the latents must divide by the VAE's factor: every pipeline takes the common multiple.
        return math.lcm(8, self.base.vae_scale_factor)

    @property
    def served(self) -> Served:
        """The bounds and defaults requests are checked against: the settings' limits and this model's own."""
        limits, model = self.limits, self.model
        return Served(
            max_side=limits.side_for(model.resolution),
            size_multiple=self.size_multiple,
            max_steps=limits.max_steps,
            max_images=limits.max_images,
            max_guidance=limits.max_guidance,
            max_prompt_chars=limits.max_prompt_chars,
            max_seed=MAX_SEED,
            resolution=model.resolution,
            default_steps=model.default_steps,
            default_guidance=model.default_guidance,
            default_scheduler=model.default_scheduler,
            schedulers=tuple(scheduler_names()),
            family=model.family,
            presets=preset_names(model.family),
            modes=tuple(MODES),
            detectors=self.detectors,
            lora_blocks=tuple(block.name for block in self.loras.blocks),
            default_style_scale=self.style.default_scale,
        )

    def pipeline_for(self, mode: str, controls: tuple[str, ...] | None = None) -> DiffusionPipeline:
        """The pipeline for `mode` with the ControlNets of `controls` (by default the mode's own, if any)."""
        if controls is None:
            controls = (mode,) if MODES[mode].is_controlled else ()
        key = (MODES[mode].edits, controls)
        if key not in self._pipes:
            auto = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}.get(
                MODES[mode].edits, AutoPipelineForText2Image
            )
            if controls == (UNION,):  # diffusers' auto pipelines do not pick the Union pipelines from a pipe
                auto = UNION_PIPELINES[MODES[mode].edits]
            controlnets = [self.controlnets.get(name) for name in controls]
            extra = {"controlnet": controlnets if len(controlnets) > 1 else controlnets[0]} if controlnets else {}
            # from_pipe casts shared modules to fp32 unless told the dtype (diffusers #12754).
            pipe = auto.from_pipe(self.base, dtype=self.dtype, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
        return self._pipes[key]

    def _controlnets_for(self, controls: list[UsedControl]) -> tuple[tuple[str, ...], list[str]]:
        """Which ControlNets run `controls`: the family's Union model for several units where it has one and it
        loads, else each unit's own; and notes for the person."""
        modes = tuple(control.mode for control in controls)
        if len(controls) < 2 or UNION not in self.controlnets.registry:
            return modes, []
        try:
            self.controlnets.get(UNION)
        except StudioError as error:
            return modes, [f"{error} Each unit ran its own ControlNet instead."]
        return (UNION,), union_note(controls)

    def generate(
        self,
        request: GenerationRequest,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        on_step: StepHook | None = None,
        *,
        seeds: Sequence[int] | None = None,
    ) -> GenerationResult:
        """Validate and run `request`; `should_stop`, polled at every step, ends a run early (StudioError).

        `on_step` sees every step's latents and x0 estimate (previews, the Explore timeline); it changes nothing.
        `seeds` (checked by the caller, as `validate_grid` does) asks for one image per seed instead of
        `num_images` from `seed`: the LoRA grid's columns, run as batches of at most the served image limit.
        """
        request, notes = validate_request(request, self.served)
        seeds = list(seeds) if seeds is not None else [request.seed + index for index in range(request.num_images)]
        notes += _unconditional_note(request)
        mode = MODES[request.mode]
        batch_size = min(len(seeds), self.limits.max_images)
        check_fits(self.model.family, self.gpu_gib, batch_size, request.width, request.height, self.model.resolution)
        max_pixels = self.limits.max_input_pixels
        controls = controls_of(request, max_pixels, self.detectors)
        edit = edit_inputs(request, max_pixels) if mode.starts_from_image else None
        style = _style_picture(request, max_pixels)
        notes += [note for control in controls for note in control.notes] + list(edit.notes if edit else ())
        with self._lock, out_of_memory_as_message(batch_size, request.width, request.height):
            controlnets, union_notes = self._controlnets_for(controls)
            notes += union_notes
            pipe = self.pipeline_for(request.mode, controlnets)
            self._use_style(request)
            notes += self.loras.activate(request.loras)
            notes += self._prompt_notes(request)
            pipe.scheduler = make_scheduler(request.scheduler, self._scheduler_config)
            on_step_end = with_step_hook(_step_callback(progress, should_stop, request.steps), pipe, on_step)
            self.accelerator.before_run(pipe, request.width, request.height, batch_size)
            images = []
            for batch in _batches(seeds, self.limits.max_images):
                if should_stop is not None and should_stop():
                    break  # a new batch would clear the stop and run a step and a decode first
                images += self._run(pipe, request, controls, controlnets == (UNION,), edit, on_step_end, style, batch)
        if edit is not None and edit.mask is not None:
            images = [keep_unmasked(pipe, edit, image) for image in images]
        if should_stop is not None and should_stop():
            raise StudioError("Stopped before the last step; no image was made.")
        parameters = self._parameters(request, seeds, controls, controlnets)
        tagged = [tag_with_parameters(image, text) for image, text in zip(images, parameters, strict=True)]
        return GenerationResult(tagged, seeds, parameters, request, maps_side_by_side(controls), notes)

    def generate_together(
        self,
        requests: Sequence[GenerationRequest],
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        on_steps: Sequence[StepHook | None] | None = None,
    ) -> list[GenerationResult]:
        """Requests with one `together_key` in shared pipeline calls (at most the served image limit each): one
        result per request, each image the one `generate` makes for it alone (a generator per image), up to float
        rounding in a larger batch (at most one level of 255 here). `on_steps` has a hook (or None) per request,
        and each sees its own images' latents."""
        checked = [validate_request(request, self.served) for request in requests]
        keys = {together_key(request) for request, _ in checked}
        if len(keys) != 1 or None in keys:
            raise ValueError("generate_together takes text requests that differ only in prompts, seeds and counts")
        first = checked[0][0]
        owners = [index for index, (request, _) in enumerate(checked) for _ in range(request.num_images)]
        seeds = [request.seed + offset for request, _ in checked for offset in range(request.num_images)]
        prompts = [(checked[owner][0].prompt, checked[owner][0].negative_prompt) for owner in owners]
        check_fits(self.model.family, self.gpu_gib, min(len(seeds), self.limits.max_images), first.width,
                   first.height, self.model.resolution)
        with self._lock, out_of_memory_as_message(len(seeds), first.width, first.height):
            pipe = self.pipeline_for(first.mode, ())
            self._use_style(first)
            shared_notes = self.loras.activate(first.loras)
            notes = [request_notes + _unconditional_note(request) + shared_notes + self._prompt_notes(request)
                     for request, request_notes in checked]
            pipe.scheduler = make_scheduler(first.scheduler, self._scheduler_config)
            self.accelerator.before_run(pipe, first.width, first.height, min(len(seeds), self.limits.max_images))
            images = []
            for batch in _batches(list(range(len(seeds))), self.limits.max_images):
                hook = _split_hook([owners[index] for index in batch], on_steps) if on_steps else None
                on_step_end = with_step_hook(_step_callback(progress, should_stop, first.steps), pipe, hook)
                images += self._run(pipe, first, [], False, None, on_step_end, None, [seeds[index] for index in batch],
                                    [prompts[index] for index in batch])
        if should_stop is not None and should_stop():
            raise StudioError("Stopped before the last step; no image was made.")
        results = []
        for index, (request, _) in enumerate(checked):
            mine = [position for position, owner in enumerate(owners) if owner == index]
            request_seeds = [seeds[position] for position in mine]
            parameters = self._parameters(request, request_seeds, [], ())
            tagged = [tag_with_parameters(images[position], text) for position, text in zip(mine, parameters,
                                                                                              strict=True)]
            results.append(GenerationResult(tagged, request_seeds, parameters, request, None, notes[index]))
        return results

    def _run(
        self,
        pipe: DiffusionPipeline,
        request: GenerationRequest,
        controls: list[UsedControl],
        union: bool,
        edit: EditInputs | None,
        on_step_end: Callable | None,
        style: Image.Image | None,
        seeds: Sequence[int],
        prompts: Sequence[tuple[str, str]] | None = None,
    ) -> list[Image.Image]:
        if edit is not None and not denoises(request):
            return [through_the_vae(pipe, edit.start) for _ in seeds]
        # One generator per image, so each image's noise depends on its seed alone, not on its place in a batch.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            num_images_per_prompt=len(seeds),
            generator=generators,
            callback_on_step_end=on_step_end,
        )
        if prompts is not None:  # requests run together: a prompt and a negative prompt per image
            # diffusers reads an empty negative prompt as it reads none: both encode "".
            kwargs.update(prompt=[prompt for prompt, _ in prompts], num_images_per_prompt=1,
                          negative_prompt=[negative for _, negative in prompts])
        if edit is not None:
            kwargs.update(image=edit.start, strength=strength_of(request))
        if edit is not None and edit.mask is not None:
            kwargs.update(mask_image=edit.mask)
        elif edit is not None:
            del kwargs["width"], kwargs["height"]  # image-to-image takes the start image's size
        kwargs.update(control_kwargs(controls, starts_from_image=edit is not None, union=union))
        kwargs.update(self.style.pipeline_kwargs(style, request.guidance_scale, len(prompts) if prompts else 1))
        return pipe(**kwargs).images

    def _use_style(self, request: GenerationRequest) -> None:
        """The style adapter loaded (on the first request with a style image) and its scales set for `request`."""
        if request.style_image is not None and not self.style.loaded:
            self.style.load(self._pipes.values())
            self.accelerator.pipelines_changed()  # offload hooks for the image encoder
        self.style.set_scales(request.style_image, request.style_mode, request.style_scale)

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

    def _parameters(
        self, request: GenerationRequest, seeds: Sequence[int], controls: list[UsedControl],
        controlnets: tuple[str, ...],
    ) -> list[str]:
        """AUTOMATIC1111's text for each seed's image: the settings its mode takes, the LoRAs' and the style
        reference's hashes (each file read once for all the images), then every ControlNet unit."""
        values = {name: getattr(request, name) for name in MODES[request.mode].parameters}
        values.update(mode=request.mode, model=self.model.name)
        if request.style_image is not None:
            values[STYLE_REFERENCE.fields[0]] = picture_hash(request.style_image)
        else:  # a request without one writes what it wrote before the style reference came
            values = {name: value for name, value in values.items() if name not in STYLE_SETTINGS_FIELDS}
        if request.loras:
            values[LORA_HASHES.fields[0]] = lora_hashes_text(
                (lora.label, lora_hashes(self.loras.resolve(lora.name), self.loras.max_file_bytes).a1111)
                for lora in request.loras
            )
        model_names = {name: display_name(source) for name, source in self.controlnets.registry.items()}
        if controlnets == (UNION,):
            model_names = {control.mode: model_names[UNION] for control in controls}
        loras = [(lora.label, lora.weight, lora.blocks) for lora in request.loras]
        texts = []
        for seed in seeds:
            settings = {
                **written_settings(SETTINGS, {**values, "seed": seed}),
                **png_units(controls, model_names),
                VERSION.key: STUDIO_VERSION,
            }
            texts.append(format_parameters(request.prompt, request.negative_prompt, settings, loras))
        return texts


# What may differ between requests that share a pipeline call: the text and the noise of each image.
PER_IMAGE_FIELDS = ("prompt", "negative_prompt", "seed", "num_images")
STYLE_SETTINGS_FIELDS = {name for setting in STYLE_SETTINGS for name in setting.fields}


def together_key(request: GenerationRequest) -> str | None:
    """Equal for checked requests that can share one pipeline call (`Studio.generate_together`): text modes with
    every other setting the same; None for a request that runs alone (a picture to start from, to follow or to take
    the style of: a style image is encoded for its own run)."""
    mode = MODES[request.mode]
    if mode.is_controlled or mode.starts_from_image or request.control_units or request.style_image is not None:
        return None
    settings = {item.name: getattr(request, item.name) for item in fields(request) if item.name not in
                PER_IMAGE_FIELDS}
    return repr(sorted(settings.items()))


def _style_picture(request: GenerationRequest, max_pixels: int) -> Image.Image | None:
    """The request's style image, opened and checked like every picture a request gives; None without one."""
    if request.style_image is None:
        return None
    return prepare_user_image(request.style_image, max_pixels=max_pixels, what="style reference (style_image)",
                              background="white")


def _unconditional_note(request: GenerationRequest) -> list[str]:
    if request.prompt:
        return []
    return ["The prompt was empty, so this image was generated unconditionally (no text guidance)."]


def _split_hook(owners: list[int], hooks: Sequence[StepHook | None]) -> StepHook | None:
    """A step hook for one batch of requests run together: each request's hook sees its own images."""
    if not any(hooks[owner] for owner in owners):
        return None

    def split(step: DenoisingStep) -> None:
        for owner in dict.fromkeys(owners):
            if hooks[owner] is None:
                continue
            mine = [index for index, each in enumerate(owners) if each == owner]
            rows = slice(mine[0], mine[-1] + 1)  # a request's images are next to each other
            hooks[owner](replace(step, latents=step.latents[rows], estimate_x0=partial(_x0_rows, step, rows)))

    return split


def _x0_rows(step: DenoisingStep, rows: slice):
    """Some images' part of the step's x0 estimate, computed (once for the batch) only when a hook asks."""
    x0 = step.predicted_x0
    return None if x0 is None else x0[rows]


def _batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _step_callback(progress: Progress | None, should_stop: ShouldStop | None, total: int) -> Callable | None:
    if progress is None and should_stop is None:
        return None

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if should_stop is not None and should_stop():
            pipe._interrupt = True  # diffusers' documented way to end a run: the remaining steps are skipped
        if progress is not None:
            progress(step + 1, total)
        return callback_kwargs

    return on_step_end
