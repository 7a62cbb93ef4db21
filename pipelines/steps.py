"""What each denoising step leaves behind, handed to a hook that watches a run (live previews, the Explore tab's
timeline) without changing it.

diffusers' `callback_on_step_end` gives the latents after each step but not the model's estimate of the clean
image (x0). Most schedulers return that estimate from `step` (`pred_original_sample`, LCM's `denoised`); for the
others (DPM++, UniPC) it is computed from the scheduler's own `alphas_cumprod` and the model's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial, wraps

import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class DenoisingStep:
    """One step of a run. The timestep and x0 are read only when a hook asks: on a GPU, turning a device tensor into
    a Python number waits for the device, and a hook that skips most steps (previews) must not stall them."""

    index: int  # steps done so far, 1 to total
    total: int
    step_timestep: torch.Tensor | float  # as the pipeline gives it: a tensor on the device
    latents: torch.Tensor  # the sample after this step, one per image
    pipe: DiffusionPipeline
    estimate_x0: Callable[[], torch.Tensor | None] = lambda: None

    @property
    def timestep(self) -> float:
        return float(self.step_timestep)

    @cached_property
    def predicted_x0(self) -> torch.Tensor | None:
        """The model's estimate of the clean latents at this step."""
        return self.estimate_x0()


StepHook = Callable[[DenoisingStep], None]


def with_step_hook(callback: Callable | None, pipe: DiffusionPipeline, on_step: StepHook | None) -> Callable | None:
    """diffusers' `callback_on_step_end` that runs `callback` (if any), then hands the step to `on_step`.

    Call it after the run's scheduler is set on `pipe`: that scheduler's `step` is watched for x0. The latents are
    passed on untouched, so a hooked run makes the same image as an unhooked one.
    """
    if on_step is None:
        return callback
    seen = _watch_predictions(pipe.scheduler)

    def on_step_end(pipe: DiffusionPipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        if callback is not None:
            callback_kwargs = callback(pipe, step, timestep, callback_kwargs)
        latents = callback_kwargs["latents"]
        estimate = partial(_predicted_x0, pipe.scheduler, *seen["step"]) if "step" in seen else lambda: None
        on_step(DenoisingStep(step + 1, pipe.num_timesteps, timestep, latents, pipe, estimate))
        return callback_kwargs

    return on_step_end


def _watch_predictions(scheduler: SchedulerMixin) -> dict[str, tuple]:
    """Wrap this scheduler instance's `step` (each run gets a fresh one) so what the last x0 estimate is made from
    is kept."""
    seen: dict[str, tuple] = {}
    step = scheduler.step

    # The pipeline passes `generator` and `eta` only if the step's signature names them: keep the original's.
    @wraps(step)
    def watched(model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        output = step(model_output, timestep, sample, *args, **kwargs)
        seen["step"] = (output, model_output, timestep, sample)
        return output

    scheduler.step = watched
    return seen


def _predicted_x0(scheduler: SchedulerMixin, output, model_output, timestep, sample) -> torch.Tensor | None:
    if isinstance(output, tuple):
        given = output[1] if len(output) > 1 else None
    else:
        given = getattr(output, "pred_original_sample", None)
        given = getattr(output, "denoised", None) if given is None else given
    if given is not None:
        return given
    return _x0_from_alphas(scheduler, model_output, timestep, sample)


def _x0_from_alphas(scheduler: SchedulerMixin, model_output, timestep, sample) -> torch.Tensor | None:
    """x0 from a variance-preserving sample x_t = sqrt(a) x0 + sqrt(1 - a) eps, a = alphas_cumprod[t]."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        return None
    alpha = alphas[int(timestep)].to(sample.device, torch.float32)
    signal, noise = alpha.sqrt(), (1 - alpha).sqrt()
    sample, model_output = sample.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - noise * model_output) / signal
    if kind == "v_prediction":
        return signal * sample - noise * model_output
    return model_output if kind == "sample" else None
