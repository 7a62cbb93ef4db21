"""The "Explore" tab: see diffusion work. Three panels, each also an API endpoint:

- Denoising timeline (`/denoise_timeline`): every k-th step of one text-mode run, the sample beside the model's
  predicted clean image, as a strip with a slider and as an animation;
- Forward noising (`/forward_noise`): an image noised to timestep t in latent and pixel space, with alpha-bar and
  the signal-to-noise ratio of three schedules plotted;
- Sweeps (`/sweep`): one prompt and seed across guidance scales, step counts or samplers, a figure per column.

Parameters and endpoints are declared in `pipelines/modes.py` and `pipelines/parameters.py`; the teaching logic
lives in `pipelines/explore/`. The timeline and the sweeps stream through `ui/live.py`, so a Stop ends them at their
next denoising step. Forward noising has no Stop: it is one VAE encode and decode, with no step to stop at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gradio as gr
import numpy as np
import pandas as pd
from gradio import utils as gradio_utils

from pipelines.endpoints import DENOISE_TIMELINE, FORWARD_NOISE, REFERENCE_STEPS, SWEEP, validate_noise
from pipelines.explore.forward import SCHEDULES, alpha_bar, forward_noise, log10_snr
from pipelines.explore.sweeps import SweepResult, run_sweep
from pipelines.explore.timeline import TimelineFrame, animation, run_timeline
from pipelines.modes import MODES
from pipelines.parameters import PARAMETERS, Param
from pipelines.request import NoiseRequest, SweepRequest, TimelineRequest
from pipelines.studio import Studio
from ui import cache_writes
from ui.endpoints import Call, endpoint_handler
from ui.errors import shown_to_person
from ui.examples import example_set, mode_examples
from ui.fields import component_for
from ui.live import Done, Progress, live
from ui.modes import GPU_QUEUE
from ui.stop import request_stop

TAB_ID = "explore"
VIEW_HEIGHT = 300
WORDS = {
    "tab": "See diffusion work: how an image comes out of noise, how training noises images, and what the main "
           "settings change. Every image here is one the Text tab would make with the same settings.",
    "timeline": "A diffusion model starts from pure noise and removes some of it at every step. Left, the current "
                "sample decoded by the VAE; right, the model's guess at each step of the finished image (its "
                "predicted x0), which settles on the layout long before the sample looks clean. **Try** the DDPM "
                "scheduler against DDIM, or 5 steps against 50, and watch when the shape appears.",
    "forward": "Training runs the other way: noise a clean image to timestep t, x_t = sqrt(alpha-bar) x0 + "
               "sqrt(1 - alpha-bar) noise, and teach the model to undo it. Stable Diffusion noises the VAE's "
               "latents, not the pixels: left, the noised latents decoded; right, the same schedule on the pixels. "
               "**Try** t = 250, 500 and 750 with each schedule: linear (DDPM) wipes the image out soonest, cosine "
               "keeps it longest, and Stable Diffusion's scaled linear still leaves a trace at t = 999 (its "
               "signal-to-noise ratio never reaches zero).",
    "sweep": "Guidance scale is how hard classifier-free guidance pushes towards the prompt: too little and the "
             "prompt is half ignored, too much and colours overshoot (at 1 or below diffusers skips the unguided "
             "pass, so those columns match). More steps bring a sampler closer to its own "
             f"{REFERENCE_STEPS}-step image: DDIM is deterministic and gets there in few steps, DDPM adds fresh "
             "noise at every step, so each step count lands on a different picture. **Try** each sweep on one "
             "prompt; on the embedded model the guidance sweep names its sweet spot.",
}


def build_explore_tab(studio: Studio) -> None:
    """Create the tab inside the caller's `gr.Tabs`."""
    with gr.Tab("Explore", id=TAB_ID):
        gr.Markdown(WORDS["tab"])
        with gr.Tabs():
            _timeline_panel(studio)
            _forward_panel(studio)
            _sweep_panel(studio)


def _fields(params: list[Param], names: tuple[str, ...] | list[str], **looks) -> dict[str, gr.components.Component]:
    by_name = {param.name: param for param in params}
    return {name: component_for(by_name[name], **looks.get(name, {})) for name in names if name in by_name}


def _inputs(params: list[Param], fields: dict) -> list[gr.components.Component]:
    return [fields[param.name] for param in params]


def _prompt_examples(studio: Studio, fields: dict[str, gr.components.Component]) -> None:
    """The Text tab's examples, which suit the model served."""
    examples = mode_examples(studio.model.family, "text")
    # A panel without a seed of its own (a sweep fixes it per cell) takes the columns it has.
    columns = MODES["text"].example_columns
    kept = [index for index, name in enumerate(columns) if name in fields]
    if examples:
        gr.Examples([[row[index] for index in kept] for row in examples],
                    inputs=[fields[columns[index]] for index in kept], label="Prompts to try")


def _run_and_stop(label: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        return gr.Button(label, variant="primary", scale=3), gr.Button("Stop", variant="stop", scale=1)


def _stops(stop: gr.Button, running) -> None:
    """Stop cancels a waiting run; a running one ends at its next denoising step (`ui/stop.py`)."""
    stop.click(request_stop, None, None, cancels=[running], api_visibility="private")


# Denoising timeline


def _timeline_panel(studio: Studio) -> None:
    params = DENOISE_TIMELINE.params(studio.served)
    names = [param.name for param in params]
    with gr.Tab(DENOISE_TIMELINE.title):
        gr.Markdown(WORDS["timeline"])
        with gr.Row():
            with gr.Column(scale=1):
                fields = _fields(params, ("prompt", "negative_prompt", "keep_every"), prompt=dict(lines=2))
                with gr.Accordion("Generation settings", open=False):
                    fields |= _fields(params, [name for name in names if name not in fields])
                run, stop = _run_and_stop("Run the timeline")
                _prompt_examples(studio, fields)
            with gr.Column(scale=2):
                with gr.Row(equal_height=True):
                    samples = _strip("Sample at each kept step (decoded)")
                    predicted = _strip("Predicted clean image (x0)")
                frame = gr.Slider(1, 2, value=1, step=1, label="Frame", info="which kept step the strips show",
                                  interactive=True)
                animated = gr.Image(label="Animation (GIF)", format="gif", type="filepath", interactive=False,
                                    elem_classes=["pixelated", "labelled-grid"], height=VIEW_HEIGHT,
                                    buttons=["download"])
                info = gr.Markdown(label="Details")
        running = run.click(
            timeline_handler(studio),
            inputs=_inputs(params, fields),
            outputs=[samples, predicted, animated, info],
            api_name=DENOISE_TIMELINE.name,
            api_description=DENOISE_TIMELINE.description,
            concurrency_id=GPU_QUEUE,
            show_progress_on=info,  # over the strips it would hide the frames as they come
        )
        running.then(_slider_for, samples, frame, api_visibility="private", queue=False)
        _stops(stop, running)
        private = dict(api_visibility="private", queue=False)
        frame.change(_select, frame, [samples, predicted], **private)
        for strip in (samples, predicted):
            strip.select(_selected, None, frame, **private)


def _strip(label: str) -> gr.Gallery:
    # Not interactive: the strips are outputs (Gradio would offer "Drop Media Here" on a gallery an event reads).
    return gr.Gallery(label=label, format="png", preview=True, object_fit="contain", height=VIEW_HEIGHT,
                      elem_classes="pixelated", allow_preview=True, scale=1, interactive=False)


def timeline_handler(studio: Studio) -> Callable:
    def run(timeline: TimelineRequest, call: Call) -> Iterator[tuple]:
        yield from stream_timeline(studio, timeline, call.progress, call.should_stop)

    return endpoint_handler(DENOISE_TIMELINE, studio.served, run)


def stream_timeline(
    studio: Studio, timeline: TimelineRequest, progress=None, should_stop: Callable[[], bool] | None = None
) -> Iterator[tuple]:
    """The strips grow while the run goes on (with yields of nothing new between frames, `ui/live.py`); the last
    yield adds the animation and the run's details."""

    def work(send: Callable, stop: Callable[[], bool]):
        return run_timeline(studio, timeline, lambda done, total: send(Progress(done, total)), stop, on_frame=send)

    frames: list[TimelineFrame] = []
    with shown_to_person():
        for item in live(work, should_stop, progress):
            if isinstance(item, Progress):
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()  # nothing new, but a cancel reaches the run here
            elif isinstance(item, TimelineFrame):
                frames.append(item)
                yield *_strips(frames), gr.skip(), gr.skip()
            elif isinstance(item, Done):
                yield *_strips(item.result.frames), _gif_file(item.result.frames), _timeline_info(item.result)


def _gif_file(frames: list[TimelineFrame]) -> str:
    """The animation as a file in Gradio's cache, which clears it with the rest: on ZeroGPU a yield is pickled back
    from the GPU worker, and a pickled PIL image keeps only its first frame, where a path keeps them all."""
    return cache_writes.save_bytes_to_cache(animation(frames), "timeline.gif", gradio_utils.get_upload_folder())


def _strips(frames: list[TimelineFrame]) -> tuple[list, list]:
    """The galleries' captions say which strip a picture is from: in preview mode a gallery hides its label."""
    samples = [(frame.latent, f"sample, {frame.label}") for frame in frames]
    predicted = [(frame.predicted, f"predicted x0, {frame.label}") for frame in frames if frame.predicted is not None]
    return samples, predicted


def _timeline_info(timeline) -> str:
    result = timeline.result
    notes = "".join(f"- {note}\n" for note in result.notes)
    return (f"{notes}\n{len(timeline.frames)} frames. The last is the image itself (seed {result.seeds[0]}):\n"
            f"```\n{result.parameters[0]}\n```")


def _slider_for(samples: list | None):
    count = len(samples or [])
    return gr.Slider(minimum=1, maximum=max(2, count), value=max(1, count), step=1)  # Gradio needs min < max


def _select(frame: float):
    index = int(frame) - 1
    return gr.Gallery(selected_index=index), gr.Gallery(selected_index=index)


def _selected(event: gr.SelectData) -> int:
    return event.index + 1


# Forward noising


def _forward_panel(studio: Studio) -> None:
    params = FORWARD_NOISE.params(studio.served)
    default_t = PARAMETERS["timestep"].default
    with gr.Tab(FORWARD_NOISE.title):
        gr.Markdown(WORDS["forward"])
        with gr.Row():
            with gr.Column(scale=1):
                fields = _fields(params, [param.name for param in params], clean_image=dict(height=220))
                run = gr.Button("Noise it", variant="primary")
                pictures = _pictures(studio.model.family)
                if pictures:
                    gr.Examples([[picture] for picture in pictures], inputs=[fields["clean_image"]],
                                label="Pictures to try")
            with gr.Column(scale=2):
                with gr.Row(equal_height=True):
                    latent_view = gr.Image(label="x_t in latent space, decoded", format="png", interactive=False,
                                           elem_classes="pixelated", height=VIEW_HEIGHT)
                    pixel_view = gr.Image(label="x_t in pixel space", format="png", interactive=False,
                                          elem_classes="pixelated", height=VIEW_HEIGHT)
                with gr.Row():
                    alpha_plot = _plot(alpha_bar_frame(default_t), "alpha-bar", "alpha-bar(t): the image's share")
                    snr_plot = _plot(log_snr_frame(default_t), "log10 SNR", "signal-to-noise ratio (log10)")
                info = gr.Markdown(label="Figures at t")
        outputs = [latent_view, pixel_view, alpha_plot, snr_plot, info]
        run.click(forward_handler(studio), inputs=_inputs(params, fields), outputs=outputs,
                  api_name=FORWARD_NOISE.name, api_description=FORWARD_NOISE.description, concurrency_id=GPU_QUEUE)
        # Sliding t or changing the schedule re-noises at once, when there is an image.
        renoise = renoise_handler(studio)
        for trigger in (fields["timestep"].change, fields["schedule"].change):
            trigger(renoise, inputs=_inputs(params, fields), outputs=outputs, api_visibility="private",
                    concurrency_id=GPU_QUEUE, trigger_mode="always_last")


def _plot(frame: pd.DataFrame, column: str, label: str) -> gr.LinePlot:
    # No fixed height: with one, Gradio cuts off the legend under the plot.
    last_t = int(frame.t.max())
    return gr.LinePlot(frame, x="t", y=column, color="curve", color_title="schedule", label=label,
                       x_lim=[0, last_t])


def _pictures(family: str) -> list[str]:
    """The example set's pictures (not its ready control maps)."""
    folder = example_set(family)
    if not folder.is_dir():
        return []
    kinds = (".png", ".jpg", ".jpeg")
    return [str(path) for path in sorted(folder.iterdir()) if path.suffix in kinds and not path.stem.endswith("_map")]


def forward_handler(studio: Studio) -> Callable:
    """The `/forward_noise` endpoint: the image noised in latent and pixel space, the plots marked at t, and the
    figures at t."""
    return endpoint_handler(FORWARD_NOISE, studio.served, lambda request, call: noise_outputs(studio, request))


def renoise_handler(studio: Studio) -> Callable:
    """Sliding t or changing the schedule: the same once there is an image; before, the plots' mark moves."""

    def run(request: NoiseRequest, call: Call) -> tuple:
        if request.clean_image is not None:
            return noise_outputs(studio, request)
        with shown_to_person():
            t = validate_noise(request, studio.served)[0].timestep
        return gr.skip(), gr.skip(), alpha_bar_frame(t), log_snr_frame(t), gr.skip()

    return endpoint_handler(FORWARD_NOISE, studio.served, run)


def noise_outputs(studio: Studio, request: NoiseRequest) -> tuple:
    with shown_to_person():
        noised = forward_noise(studio, request)
    t = noised.request.timestep
    info = (f"t = {t} ({noised.request.schedule}): alpha-bar = {noised.alpha_bar:.4f}, SNR = {noised.snr:.4g}; "
            f"the noised latents have mean {noised.latent_mean:.3f} and standard deviation {noised.latent_std:.3f}.")
    return noised.latent_view, noised.pixel_view, alpha_bar_frame(t), log_snr_frame(t), info


def alpha_bar_frame(t: int) -> pd.DataFrame:
    """alpha-bar(t) of every schedule (diffusers' `alphas_cumprod`), and a vertical line at the current t."""
    return _curves({name: alpha_bar(name) for name in SCHEDULES}, "alpha-bar", t)


def log_snr_frame(t: int) -> pd.DataFrame:
    return _curves({name: log10_snr(name) for name in SCHEDULES}, "log10 SNR", t)


def _curves(curves: dict[str, np.ndarray], column: str, t: int) -> pd.DataFrame:
    parts = [pd.DataFrame({"t": np.arange(len(values)), column: values, "curve": name})
             for name, values in curves.items()]
    low, high = min(values.min() for values in curves.values()), max(values.max() for values in curves.values())
    parts.append(pd.DataFrame({"t": [t, t], column: [low, high], "curve": f"t = {t}"}))
    return pd.concat(parts, ignore_index=True)


# Sweeps


def _sweep_panel(studio: Studio) -> None:
    params = SWEEP.params(studio.served)
    names = [param.name for param in params]
    with gr.Tab(SWEEP.title):
        gr.Markdown(WORDS["sweep"])
        with gr.Row():
            with gr.Column(scale=1):
                fields = _fields(params, ("sweep", "prompt", "negative_prompt", "guidance_scales", "step_counts"),
                                 prompt=dict(lines=2))
                with gr.Accordion("Generation settings", open=False):
                    fields |= _fields(params, [name for name in names if name not in fields])
                run, stop = _run_and_stop("Run the sweep")
                _prompt_examples(studio, fields)
            with gr.Column(scale=2):
                grid = gr.Image(label="Sweep", type="pil", format="png", interactive=False,
                                buttons=["download", "fullscreen"], elem_classes="labelled-grid")
                table = gr.Dataframe(headers=["row", "column", "figure", "value"], interactive=False,
                                     label="Measured figures")
                notes = gr.Markdown(label="Findings")
        running = run.click(sweep_handler(studio), inputs=_inputs(params, fields),
                            outputs=[grid, table, notes], api_name=SWEEP.name, api_description=SWEEP.description,
                            concurrency_id=GPU_QUEUE)
        _stops(stop, running)


def sweep_handler(studio: Studio) -> Callable:
    def run(sweep: SweepRequest, call: Call) -> Iterator[tuple]:
        yield from stream_sweep(studio, sweep, call.progress, call.should_stop)

    return endpoint_handler(SWEEP, studio.served, run)


def stream_sweep(
    studio: Studio, sweep: SweepRequest, progress=None, should_stop: Callable[[], bool] | None = None
) -> Iterator[tuple]:
    """Nothing new every few denoising steps (`ui/live.py`), then the grid, the measured figures and the findings."""

    def work(send: Callable, stop: Callable[[], bool]) -> SweepResult:
        return run_sweep(studio, sweep, lambda done, total: send(Progress(done, total)), stop)

    with shown_to_person():
        for item in live(work, should_stop, progress):
            if isinstance(item, Progress):
                yield gr.skip(), gr.skip(), gr.skip()  # nothing new, but a cancel reaches the run here
            elif isinstance(item, Done):
                result = item.result
                rows = [[cell["row"], cell["column"], name, round(value, 3)]
                        for cell in result.figures for name, value in cell.items() if name not in ("row", "column")]
                yield result.image, rows, "\n\n".join(result.notes)
