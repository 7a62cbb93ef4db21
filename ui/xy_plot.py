"""The LoRA lab's X/Y plot panel (`/xy_plot`): any two settings against each other, as A1111's X/Y plot does.

The endpoint is declared in `pipelines/endpoints.py` (XY_PLOT, its axes in AXES) and run by `pipelines/xy.py`;
this lays out its components, streams the rows as they come and formats the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gradio as gr

from pipelines.endpoints import XY_PLOT
from pipelines.layout import RenderedGrid
from pipelines.parameters import Served
from pipelines.request import XYRequest
from pipelines.studio import Studio
from pipelines.xy import render_xy
from ui.endpoints import Call, endpoint_handler
from ui.errors import shown_to_person
from ui.fields import component_for
from ui.live import Done, Progress, Send, ShouldStop, live
from ui.stop import request_stop

LOOKS = {"prompt": dict(lines=2), "image": dict(label="Control map (pose, edge, depth)")}


def build_xy_plot(studio: Studio, served: Served, concurrency_limit: int) -> None:
    """The panel, inside the caller's layout."""
    params = XY_PLOT.params(served)
    with gr.Accordion(XY_PLOT.title, open=False):
        gr.Markdown(XY_PLOT.description)
        fields = {}
        for names in (("x_axis", "x_values"), ("y_axis", "y_values")):
            with gr.Row():
                for param in (param for param in params if param.name in names):
                    fields[param.name] = component_for(param)
        for param in params:
            if param.name not in fields:
                fields[param.name] = component_for(param, **LOOKS.get(param.name, {}))
        with gr.Row():
            run = gr.Button("Render the plot", variant="primary", scale=3)
            stop = gr.Button("Stop", variant="stop", scale=1)
        plot = gr.Image(label="X/Y plot", type="filepath", format="png", interactive=False,
                        buttons=["download", "fullscreen"], elem_classes="labelled-grid")
        notes = gr.Markdown(label="Notes")
    rendering = run.click(
        xy_handler(studio, served), inputs=[fields[param.name] for param in params], outputs=[plot, notes],
        api_name=XY_PLOT.name, api_description=XY_PLOT.description, concurrency_limit=concurrency_limit,
        show_progress_on=notes,
    )
    stop.click(request_stop, None, None, cancels=[rendering], api_visibility="private").then(
        lambda: None, None, plot, queue=False, api_visibility="private"
    )


def xy_handler(studio: Studio, served: Served) -> Callable:
    def run(plot: XYRequest, call: Call) -> Iterator[tuple]:
        yield from stream_xy(studio, plot, call.progress, call.should_stop)

    return endpoint_handler(XY_PLOT, served, run)


def stream_xy(studio: Studio, plot: XYRequest, progress=None, should_stop: ShouldStop | None = None) -> Iterator[tuple]:
    """The plot so far after each row, nothing new every few denoising steps (`ui/live.py`), then the plot and its
    notes."""

    def work(send: Send, stop: ShouldStop) -> RenderedGrid:
        return render_xy(studio, plot, progress=lambda done, total: send(Progress(done, total)), should_stop=stop,
                         on_row=send)

    with shown_to_person():
        for item in live(work, should_stop, progress):
            if isinstance(item, Progress):
                yield gr.skip(), gr.skip()  # nothing new, but a cancel reaches the run here
            elif isinstance(item, Done):
                summary = f"Rendered {len(item.result.cells)} images in {item.result.seconds:.1f} s."
                yield item.result.image, "\n\n".join([summary, *item.result.notes])
            else:
                yield item, gr.skip()  # the rows made so far
