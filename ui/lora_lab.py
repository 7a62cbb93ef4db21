"""The "LoRA lab" tab: find LoRAs (folder, upload, Hub), read what they say about themselves, and
compare them in a labelled grid against the "no LoRA" baseline.

API endpoints: `/loras` (what the LoRA folder holds), `/lora_info` (what one LoRA file is and where its weights are,
the inspector's answer as JSON) and `/lora_grid` (render a grid; its parameters are declared in
`pipelines/endpoints.py` like every mode's). Uploads live in a `gr.State`, so each visitor only
ever sees and uses their own. The handlers are plain functions of the studio and one typed request; the grid's
streams its rows as they are made, and a Stop ends it at its next denoising step (`ui/live.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from pipelines.endpoints import LORA_GRID
from pipelines.errors import StudioError
from pipelines.grid import render_grid
from pipelines.layout import RenderedGrid
from pipelines.lora.formats import family_label
from pipelines.lora.hashes import LoraHashes, lora_hashes
from pipelines.lora.inspect import LoraInspection, TagFolder, inspect_lora
from pipelines.lora.runs import in_training_order
from pipelines.lora.sources import HUB_PREFIX, LoraEntry
from pipelines.modes import STYLE
from pipelines.outputs import OutputFolder
from pipelines.parameters import PARAMETERS, Param, Served
from pipelines.request import GridRequest
from pipelines.studio import Studio
from pipelines.validation import clean
from ui.endpoints import Call, endpoint_handler
from ui.errors import shown_to_person
from ui.fields import component_for
from ui.live import Done, Progress, Send, ShouldStop, live
from ui.modes import style_fields
from ui.stop import request_stop
from ui.xy_plot import build_xy_plot

if TYPE_CHECKING:
    from ui.history import History

LIBRARY_HEADERS = ["name", "size", "family", "trigger words", "title"]
# Two grids may interleave row by row: each row is one studio.generate call under the studio's lock.
GRID_CONCURRENCY = 2
LORA_INFO = "lora_info"  # reads a whole LoRA file: counted in a visitor's share like generation (ui/queue.py)
LORA_NAME = replace(PARAMETERS["lora_names"], name="name", label="LoRA name")
HEADER_COLUMNS = ["field", "value"]
CHART_X, CHART_Y = "block", "change"
MARKDOWN_MARKS = re.compile(r"([\\`*_{}\[\]()#+\-!|<>~])")


def build_lora_lab(studio: Studio, history: History | None = None) -> None:
    """Create the "LoRA lab" tab inside the caller's `gr.Blocks`; with a `history`, each grid is saved to its
    output folder and listed in the History tab."""
    manager = studio.loras
    served = grid_served(studio)
    params = LORA_GRID.params(served)
    with gr.Tab(LORA_GRID.title):
        uploads = gr.State([])
        gr.Markdown(
            f"{LORA_GRID.description} Pick LoRAs from the folder, upload your own (for your session only, kept "
            f"{_duration(studio.settings.cache_age_s)}) or name one on the Hugging Face Hub. Only `.safetensors` files "
            "are read."
        )
        library = gr.Dataframe(
            headers=LIBRARY_HEADERS, value=library_rows(manager.available()), interactive=False, label="LoRA folder"
        )
        refresh = gr.Button("Refresh the list", size="sm")
        with gr.Row():
            upload = gr.File(label="Upload LoRAs (.safetensors; a run's checkpoints at once)", file_count="multiple",
                             file_types=[".safetensors"], type="filepath")
            with gr.Column():
                hub_id = gr.Textbox(label="Hub LoRA", placeholder="hub:owner/repo or hub:owner/repo/file.safetensors")
                add_hub = gr.Button("Add the Hub LoRA", size="sm")
        fields = {param.name: component_for(param) for param in params if param.name == "lora_names"}
        details = gr.Markdown()
        for name in ("together", "add_together"):
            fields[name] = component_for(params_by_name(params)[name])
        with gr.Row():
            fields["prompt"] = component_for(params_by_name(params)["prompt"], lines=2, scale=4)
            fields["add_triggers"] = component_for(params_by_name(params)["add_triggers"], scale=1)
        fields["negative_prompt"] = component_for(params_by_name(params)["negative_prompt"])
        with gr.Row():
            for name in ("weights", "seeds", "steps", "guidance_scale"):
                looks = {"info": PARAMETERS[name].help} if name == "weights" else {}  # `1@out`: a block preset's row
                fields[name] = component_for(params_by_name(params)[name], **looks)
        with gr.Row():
            fields["mode"] = component_for(params_by_name(params)["mode"])
            fields["image"] = component_for(params_by_name(params)["image"], label="Control map (pose, edge, depth)")
        with gr.Accordion("Style reference (a last row, without LoRAs)", open=False):
            style_fields([params_by_name(params)[name] for name in STYLE], fields)
        with gr.Row():
            render = gr.Button("Render the grid", variant="primary", scale=3)
            stop = gr.Button("Stop", variant="stop", scale=1)
        # The download button saves the PNG with every cell's parameters; Gradio's cache holds it, and clears it.
        # As an input (the History's record of it) the grid is that cached file.
        grid_image = gr.Image(
            label="Grid", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"]
        )
        notes = gr.Markdown(label="Notes")

        chosen = fields["lora_names"]
        private = dict(api_visibility="private")
        refresh.click(partial(refresh_library, studio), [chosen, uploads], [library, chosen], **private)
        upload.upload(partial(on_upload, studio), [upload, chosen, uploads], [chosen, uploads, details], **private)
        add_hub.click(partial(on_hub, studio), [hub_id, chosen, uploads], [chosen, details], **private)
        chosen.change(partial(on_choose, studio), [chosen, uploads, fields["together"]], [details, fields["together"]],
                      **private)
        rendering = render.click(
            grid_handler(studio, served, history.outputs if history else None),
            inputs=[*(fields[param.name] for param in params), uploads],
            outputs=[grid_image, notes],
            api_name=LORA_GRID.name,
            api_description=LORA_GRID.description,
            concurrency_limit=GRID_CONCURRENCY,
            show_progress_on=notes,  # over the grid it would hide the rows as they come
        )
        if history is not None:
            history.follow_grid(rendering, grid_image)
        # A stopped grid makes no image: the rows shown so far go too (they carry no parameters).
        stop.click(request_stop, None, None, cancels=[rendering], **private).then(
            lambda: None, None, grid_image, queue=False, **private
        )

        build_xy_plot(studio, served, GRID_CONCURRENCY)
        build_inspector(studio, uploads, chosen, refresh)

        def loras() -> list[dict]:
            """Every LoRA in the folder: name, size, family, trigger words, title and header metadata."""
            return [entry_as_dict(entry) for entry in manager.available()]

        gr.api(loras, api_name="loras")


def grid_served(studio: Studio) -> Served:
    """What is served, with the LoRA folder's names for the grid's menu."""
    return replace(studio.served, lora_names=tuple(studio.loras.library.names()))


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def params_by_name(params: list[Param]) -> dict[str, Param]:
    return {param.name: param for param in params}


def grid_handler(studio: Studio, served: Served, outputs: OutputFolder | None = None) -> Callable:
    """The `/lora_grid` endpoint (the session's uploads come from its state)."""

    def run(grid: GridRequest, kept: list[str] | None, call: Call) -> Iterator[tuple]:
        yield from render(studio, grid, kept, call.progress, should_stop=call.should_stop, outputs=outputs)

    return endpoint_handler(LORA_GRID, served, run, hidden=("uploads",))


def render(
    studio: Studio,
    grid: GridRequest,
    kept: list[str] | None,
    progress=None,
    should_stop: ShouldStop | None = None,
    outputs: OutputFolder | None = None,
) -> Iterator[tuple]:
    """Yields the grid so far after each row, nothing new every few denoising steps (`ui/live.py`), then the grid and
    its notes (saved to `outputs` first, where a failure to save is a note)."""

    def work(send: Send, stop: ShouldStop) -> RenderedGrid:
        return render_grid(
            studio, grid, progress=lambda done, total: send(Progress(done, total)), should_stop=stop, on_row=send
        )

    with shown_to_person():
        _check_session(grid.lora_names, kept or [])
        for item in live(work, should_stop, progress):
            if isinstance(item, Progress):
                yield gr.skip(), gr.skip()  # nothing new, but a cancel reaches the run here
            elif isinstance(item, Done):
                result = item.result
                if outputs is not None:
                    outputs.keep_grid(result.image, grid.base.mode, result.notes)
                summary = f"Rendered {len(result.cells)} images in {result.seconds:.1f} s."
                yield result.image, "\n\n".join([summary, *result.notes])
            else:
                yield item, gr.skip()  # the rows made so far


def build_inspector(studio: Studio, uploads: gr.State, chosen: gr.Dropdown, refresh: gr.Button) -> None:
    """The "Inspect a LoRA" panel inside the lab's tab (its menu follows the lab's LoRAs), and `/lora_info`."""
    with gr.Accordion("Inspect a LoRA", open=False):
        gr.Markdown(
            "What a LoRA file says about itself and where its weights are: the training facts its header records "
            "(kohya's `ss_*` fields, `modelspec.*`), trigger words and dataset tags, the hashes A1111 and Civitai know "
            "it by, the whole header, and the change it makes per block: ||up @ down||<sub>F</sub> x alpha / rank of "
            "every layer, summed per block as the LoRA Block Weight extension numbers them (SD 1.x/2.x, SDXL), or per "
            "IN/MID/OUT. BASE is the text encoders."
        )
        with gr.Row():
            picked = gr.Dropdown(label="LoRA to inspect", choices=_choices(studio.loras, [], None), value=None, scale=4)
            inspect = gr.Button("Inspect", scale=1)
        summary = gr.Markdown()
        chart = gr.BarPlot(
            x=CHART_X, y=CHART_Y, label="Change per block", y_title="||up @ down||_F x alpha / rank, summed"
        )
        header = gr.Dataframe(
            headers=HEADER_COLUMNS, interactive=False, wrap=True, label="Header (__metadata__)",
            column_widths=["25%", "75%"],
        )
    private = dict(api_visibility="private")
    for changed in (refresh.click, chosen.change):
        changed(partial(inspector_choices, studio), [picked, chosen, uploads], picked, **private)
    gr.on(
        [inspect.click, picked.input], partial(on_inspect, studio), [picked, uploads], [summary, chart, header],
        **private,
    )

    def lora_info(name: str) -> dict:
        """What a LoRA file is and where its weights are: its training facts, trigger words and dataset tags, its
        hashes (A1111, Civitai AutoV2 and AutoV3), its whole header, and the change it makes per UNet block.

        Args:
            name: a file in the LoRA folder (`stripes` or `stripes.safetensors`) or a Hub LoRA (`hub:owner/repo`)
        Returns:
            {"name", "size_bytes", "layout", "family", "facts", "trigger_words", "top_tags", "tag_folders", "hashes",
            "block_layout", "blocks" (summed change per block, in block order), "coarse" (BASE, IN, MID, OUT),
            "ranks", "layers", "header", "notes"}
        """
        with shown_to_person():
            [name] = clean(LORA_NAME, [name], [])  # its type, length and characters, as the grid's names are checked
            _check_session([name], [])  # uploads belong to a page's session, which an API call has none of
            return inspection_as_dict(name, *inspect_named(studio, name))

    gr.api(lora_info, api_name=LORA_INFO)


def inspector_choices(studio: Studio, picked: str | None, current: list[str] | None, kept: list[str]) -> gr.Dropdown:
    """The lab's LoRAs; the one shown stays, or becomes the last one chosen for the grid."""
    choices = _choices(studio.loras, kept, current)
    values = [choice[1] if isinstance(choice, tuple) else choice for choice in choices]
    value = picked if picked in values else (current or [None])[-1]
    return gr.Dropdown(choices=choices, value=value)


def on_inspect(studio: Studio, name: str | None, kept: list[str]) -> tuple:
    if not name:
        return "Choose a LoRA to inspect.", gr.skip(), gr.skip()
    with shown_to_person():
        _check_session([name], kept or [])
        inspection, hashes = inspect_named(studio, name)
    rows = [list(row) for row in inspection.header]
    return inspection_markdown(name, inspection, hashes), block_chart(inspection), rows


def inspect_named(studio: Studio, name: str) -> tuple[LoraInspection, LoraHashes]:
    """Any LoRA the lab can use, for whichever family it was made: inspecting one is how to find that out."""
    path = studio.loras.resolve(name)
    limit = studio.loras.max_file_bytes
    return inspect_lora(path, limit), lora_hashes(path, limit)


def block_chart(inspection: LoraInspection) -> gr.BarPlot:
    blocks = inspection.blocks
    frame = pd.DataFrame({CHART_X: list(blocks), CHART_Y: list(blocks.values())})
    return gr.BarPlot(value=frame, sort=list(blocks), caption=inspection.block_layout.name)


def inspection_markdown(name: str, inspection: LoraInspection, hashes: LoraHashes) -> str:
    ranks = ", ".join(str(rank) for rank in inspection.ranks) or "none"
    scales = ", ".join(f"{scale:g}" for scale in inspection.scales) or "none"
    recorded = " (A1111's is the one the file records, `sshs_model_hash`)" if hashes.recorded else ""
    parts = [
        f"**{_markdown_text(Path(name).name)}**: {inspection.file_bytes / 2**20:.1f} MiB, {inspection.layout} layout, "
        f"made for {family_label(inspection.family)}; {len(inspection.layers)} layers measured, rank {ranks}, "
        f"alpha / rank {scales}.",
        f"**Trigger words:** {_markdown_text(', '.join(inspection.trigger_words)) or 'none recorded'}",
        f"**Hashes:** A1111 `{hashes.a1111}` · Civitai AutoV2 `{hashes.autov2}` · AutoV3 `{hashes.autov3}`{recorded}",
        f"**Change per block:** {_shares(inspection.coarse)}; the chart: {inspection.block_layout.name}.",
    ]
    if inspection.facts:
        rows = "\n".join(f"| {label} | {_markdown_text(value)} |" for label, value in inspection.facts)
        parts.append(f"| training | |\n|---|---|\n{rows}")
    if inspection.top_tags:
        parts.append(f"**Most frequent training tags:** {_tag_counts(inspection.top_tags)}")
    parts += [_folder_line(folder) for folder in inspection.tag_folders]
    parts += [f"- {_markdown_text(note)}" for note in inspection.notes]
    return "\n\n".join(parts)


def inspection_as_dict(name: str, inspection: LoraInspection, hashes: LoraHashes) -> dict:
    return {
        "name": name,
        "size_bytes": inspection.file_bytes,
        "layout": inspection.layout,
        "family": inspection.family,
        "facts": dict(inspection.facts),
        "trigger_words": list(inspection.trigger_words),
        "top_tags": dict(inspection.top_tags),
        "tag_folders": [
            {"name": folder.name, "images": folder.images, "repeats": folder.repeats,
             "distinct_tags": folder.distinct_tags, "tags": dict(folder.tags)}
            for folder in inspection.tag_folders
        ],
        "hashes": {"a1111": hashes.a1111, "autov2": hashes.autov2, "autov3": hashes.autov3,
                   "sha256": hashes.file_sha256},
        "block_layout": inspection.block_layout.name,
        "blocks": inspection.blocks,
        "coarse": inspection.coarse,
        "ranks": list(inspection.ranks),
        "layers": len(inspection.layers),
        "header": dict(inspection.header),
        "notes": list(inspection.notes),
    }


def _shares(coarse: dict[str, float]) -> str:
    total = sum(coarse.values())
    if not total:
        return "none measured"
    return ", ".join(f"{block} {value / total:.0%}" for block, value in coarse.items())


def _folder_line(folder: TagFolder) -> str:
    counts = [
        f"{folder.images} images" if folder.images is not None else "",
        f"{folder.repeats} repeats" if folder.repeats is not None else "",
        f"{folder.distinct_tags} distinct tags",
    ]
    return f"- `{folder.name}` ({', '.join(filter(None, counts))}): {_tag_counts(folder.tags)}"


def _tag_counts(tags: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{_markdown_text(tag)} ({count})" for tag, count in tags)


def _markdown_text(text: str) -> str:
    """Header text shown as itself: markdown's marks escaped, one line (a table cell ends at a newline)."""
    return MARKDOWN_MARKS.sub(r"\\\1", " ".join(text.split()))


def refresh_library(studio: Studio, current: list[str] | None, kept: list[str]):
    entries = studio.loras.available()
    return library_rows(entries), gr.Dropdown(choices=_choices(studio.loras, kept, current, entries))


def on_upload(studio: Studio, paths: list[str] | None, current: list[str] | None, kept: list[str]):
    """Each uploaded file checked and chosen for the grid (a run's checkpoints come in training order there)."""
    if not paths:
        return gr.skip(), kept, gr.skip()
    with shown_to_person():
        entries = [studio.loras.add_upload(path) for path in paths]
    # A file chooser gives the files in any order; shown in the grid's order, a run's epochs read left to right.
    names = in_training_order([entry.name for entry in entries], {entry.name: entry.point for entry in entries})
    kept = list(dict.fromkeys([*kept, *names]))
    value = list(current or [])
    for name in names:
        value = _with(value, name)
    shown = describe_entries(sorted(entries, key=lambda entry: names.index(entry.name)))
    return gr.Dropdown(choices=_choices(studio.loras, kept, value), value=value), kept, shown


def on_hub(studio: Studio, spec: str, current: list[str] | None, kept: list[str]):
    spec = spec.strip()
    if not spec.startswith(HUB_PREFIX):
        spec = HUB_PREFIX + spec
    with shown_to_person():
        entry = studio.loras.check(spec)
    value = _with(current, spec)
    return gr.Dropdown(choices=_choices(studio.loras, kept, value), value=value), describe_entries([entry])


def on_choose(studio: Studio, names: list[str] | None, kept: list[str], table: str):
    with shown_to_person():
        _check_session(names or [], kept)
    entries, refusals = [], []
    for name in names or []:
        try:
            entries.append(studio.loras.check(name))
        except StudioError as error:
            refusals.append(f"**{Path(name).name}** refused: {error}")
    weights_now = dict(_together_pairs(table))
    pairs = [f"{Path(name).name}: {weights_now.get(Path(name).name, '1')}" for name in names or []]
    return describe_entries(entries) + "\n\n".join(["", *refusals]), ", ".join(pairs)


def library_rows(entries: list[LoraEntry]) -> list[list[str]]:
    return [
        [entry.name, entry.size_label, entry.family_label, ", ".join(entry.trigger_words), entry.title or ""]
        for entry in entries
    ]


def entry_as_dict(entry: LoraEntry) -> dict:
    return {
        "name": entry.name,
        "size_bytes": entry.size_bytes,
        "family": entry.family,
        "trigger_words": list(entry.trigger_words),
        "title": entry.title,
        "source": entry.source,
        "metadata": entry.fields,
    }


def describe_entries(entries: list[LoraEntry]) -> str:
    blocks = []
    for entry in entries:
        lines = [f"**{Path(entry.name).name}** ({entry.source}, {entry.size_label}, made for {entry.family_label})"]
        if entry.title:
            lines.append(f"title: {entry.title}")
        if entry.point.label:  # how the grid will name and order its row
            lines.append(f"checkpoint: {entry.point.shown}")
        lines.append(f"trigger words: {', '.join(entry.trigger_words) or 'none recorded'}")
        lines += [f"`{key}`: {value}" for key, value in entry.fields.items()]
        blocks.append("  \n".join(lines))
    return "\n\n".join(blocks)


def _together_pairs(text: str | None) -> list[tuple[str, str]]:
    pairs = []
    for part in (text or "").replace("\n", ",").split(","):
        if part.strip():
            name, _, weight = part.rpartition(":")
            pairs.append((name.strip(), weight.strip()) if name else (weight.strip(), "1"))
    return pairs


def _choices(manager, kept: list[str], current: list[str] | None, entries: list[LoraEntry] | None = None) -> list:
    """Folder files, this session's uploads (shown by file name) and the Hub LoRAs already chosen."""
    names = [entry.name for entry in entries] if entries is not None else manager.library.names()
    hub = [name for name in current or [] if name.startswith(HUB_PREFIX)]
    return [*names, *[(f"{Path(path).name} (upload)", path) for path in kept], *hub]


def _with(current: list[str] | None, name: str) -> list[str]:
    return [*(current or []), name] if name not in (current or []) else list(current)


def _check_session(names, kept: list[str]) -> None:
    """An absolute path is an upload; only the session that uploaded it may use it."""
    for name in names if isinstance(names, (list, tuple)) else ():
        if isinstance(name, str) and Path(name).is_absolute() and name not in kept:
            raise StudioError(f"{Path(name).name!r} is not one of this session's uploads; upload it again.")
