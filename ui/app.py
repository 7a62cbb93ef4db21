"""The whole page: a tab per mode, then the LoRA lab, PNG info, Explore and History."""

from __future__ import annotations

import gradio as gr

from pipelines.modes import MODES
from pipelines.studio import Studio
from ui.cache import start_cache_sweeper
from ui.explore import build_explore_tab
from ui.history import History, build_history_tab
from ui.lora_lab import build_lora_lab
from ui.modes import build_mode_tab
from ui.png_info import build_png_info_tab
from ui.stop import forget_session

# Small native resolutions (the embedded model's 64x64) are shown enlarged without blurring, and whole; the
# parameters block wraps instead of running off the panel; a labelled grid starts below the component's own label.
CSS = """
.pixelated img { image-rendering: pixelated; object-fit: contain; max-width: 100%; max-height: 100%; }
.parameters pre, .parameters code { white-space: pre-wrap; overflow-wrap: anywhere; }
.labelled-grid .image-container { padding-top: 2.2em; }
"""


def build_app(studio: Studio, warning: str = "") -> gr.Blocks:
    age = studio.settings.cache_age_s
    # Gradio's cache holds every image, grid, GIF and upload of every request; a file goes once it is `age` seconds
    # old, checked every `age` seconds (at most ten minutes). Gradio's own check misses most of them (`ui/cache.py`):
    # the sweeper started below walks the folder itself.
    with gr.Blocks(title="Diffusion studio", delete_cache=(min(age, 600), age)) as demo:
        gr.Markdown(
            f"# Diffusion studio\nModel: **{studio.model.name}** ({studio.model.family}), "
            f"{studio.model.resolution}x{studio.model.resolution} native, on {studio.device}."
        )
        if warning:
            gr.Markdown(f"> **Note:** {warning}")
        history = History.create(studio)  # the output folder, and what this session made
        with gr.Tabs() as tabs:
            mode_fields = {mode.name: build_mode_tab(studio, mode, history) for mode in MODES.values()}
            build_lora_lab(studio, history)
            build_png_info_tab(studio, tabs, mode_fields)
            build_explore_tab(studio)
            build_history_tab(studio, history, tabs, mode_fields)
        randomize = [fields["randomize_seed"] for fields in mode_fields.values()]
        # A person exploring gets a new seed each run; set once the page is open, so the API default stays False.
        demo.load(lambda: [True] * len(randomize), None, randomize, api_visibility="private", queue=False)
        demo.unload(forget_session)
    start_cache_sweeper(demo, age)
    return demo
