"""The "LoRA lab" tab: find LoRAs (folder, upload, Hub), read what they say about themselves, and
compare them in a labelled grid against the "no LoRA" baseline.

API endpoints: `/loras` (what the LoRA folder holds) and `/lora_grid` (render a grid). Uploads live
in a `gr.State`, so each visitor only ever sees and uses their own.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipelines.errors import StudioError
from pipelines.lora.grid import parse_seeds, parse_weights, render_grid
from pipelines.lora.sources import HUB_PREFIX, LoraEntry
from pipelines.request import MODES, GenerationRequest, LoraChoice

LIBRARY_HEADERS = ["name", "size", "family", "trigger words", "title"]
# Two grids may interleave cell by cell: each cell is one studio.generate call under the studio's lock.
GRID_CONCURRENCY = 2


def build_lora_lab(studio, settings) -> None:
    """Create the "LoRA lab" tab inside the caller's `gr.Blocks`."""
    manager = studio.loras
    with gr.Tab("LoRA lab"):
        uploads = gr.State([])
        gr.Markdown(
            "Compare style LoRAs side by side: pick LoRAs from the folder, upload your own (kept for this session "
            "only) or name one on the Hugging Face Hub; then render a grid of weights against the baseline, with "
            "the same seed down each column. Only `.safetensors` files are read."
        )
        with gr.Row():
            library = gr.Dataframe(
                headers=LIBRARY_HEADERS, value=library_rows(manager.available()), interactive=False, label="LoRA folder"
            )
        refresh = gr.Button("Refresh the list", size="sm")
        with gr.Row():
            upload = gr.File(label="Upload a LoRA (.safetensors)", file_types=[".safetensors"], type="filepath")
            with gr.Column():
                hub_id = gr.Textbox(label="Hub LoRA", placeholder="hub:owner/repo or hub:owner/repo/file.safetensors")
                add_hub = gr.Button("Add the Hub LoRA", size="sm")
        chosen = gr.Dropdown(
            choices=manager.library.names(), multiselect=True, allow_custom_value=True, label="LoRAs in the grid"
        )
        details = gr.Markdown()
        together = gr.Textbox(
            label="Weight per LoRA for the 'together' row (several LoRAs at once)",
            placeholder="ink.safetensors: 0.8, neon.safetensors: 0.5",
        )
        add_together = gr.Checkbox(label="Add a row with all chosen LoRAs together at these weights", value=False)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=4)
            add_triggers = gr.Button("Add trigger words to the prompt", scale=1)
        negative = gr.Textbox(label="Negative prompt")
        with gr.Row():
            weights = gr.Textbox(label="Weights", value="0, 0.5, 1")
            seeds = gr.Textbox(label="Seeds (one column each)", value="1, 2")
            steps = gr.Slider(1, settings.limits.max_steps, value=studio.model.default_steps, step=1, label="Steps")
            guidance = gr.Slider(
                0, settings.limits.max_guidance, value=studio.model.default_guidance, step=0.5, label="Guidance"
            )
        with gr.Row():
            mode = gr.Dropdown(list(MODES), value="text", label="Mode")
            control_image = gr.Image(type="pil", label="Control image (pose, edge and depth modes)")
        render = gr.Button("Render the grid", variant="primary")
        grid_image = gr.Image(
            label="Grid", type="filepath", format="png", interactive=False, elem_classes=["pixelated"]
        )
        grid_file = gr.File(label="Download the grid (PNG with every cell's parameters)")
        notes = gr.Markdown()

        def refresh_library(current, kept):
            entries = manager.available()
            return library_rows(entries), gr.Dropdown(choices=_choices(manager, kept, current, entries))

        def on_upload(path, current, kept):
            if not path:
                return gr.skip(), kept, gr.skip()
            entry = _plain_errors(manager.add_upload, path, Path(path).name)
            kept = [*kept, entry.name] if entry.name not in kept else kept
            value = _with(current, entry.name)
            return gr.Dropdown(choices=_choices(manager, kept, value), value=value), kept, describe_entries([entry])

        def on_hub(spec, current, kept):
            spec = spec.strip()
            if not spec.startswith(HUB_PREFIX):
                spec = HUB_PREFIX + spec
            entry = _plain_errors(manager.check, spec)
            value = _with(current, spec)
            return gr.Dropdown(choices=_choices(manager, kept, value), value=value), describe_entries([entry])

        def on_choose(names, kept, table):
            _check_session(names or [], kept)
            entries, refusals = [], []
            for name in names or []:
                try:
                    entries.append(manager.check(name))
                except StudioError as error:
                    refusals.append(f"**{Path(name).name}** refused: {error}")
            weights_now = dict(_together_pairs(table))
            pairs = [f"{Path(name).name}: {weights_now.get(Path(name).name, '1')}" for name in names or []]
            return describe_entries(entries) + "\n\n".join(["", *refusals]), ", ".join(pairs)

        def on_add_triggers(text, names, kept):
            _check_session(names or [], kept)
            words = [word for name in names or [] for word in _plain_errors(manager.check, name).trigger_words]
            return add_trigger_words(text, words)

        def on_render(
            names,
            weights_text,
            seeds_text,
            prompt_text,
            negative_text,
            mode_name,
            image,
            steps_value,
            guidance_value,
            table,
            with_together,
            kept,
            progress=gr.Progress(),  # noqa: B008 - Gradio injects progress through this default
        ):
            _check_session(names or [], kept)
            request = GenerationRequest(
                mode=mode_name,
                prompt=prompt_text,
                negative_prompt=negative_text,
                image=image,
                steps=int(steps_value),
                guidance_scale=float(guidance_value),
            )
            combined = together_choices(table, names or []) if with_together else ()
            result = _plain_errors(
                lambda: render_grid(
                    studio,
                    request,
                    names or [],
                    parse_weights(weights_text),
                    parse_seeds(seeds_text),
                    together=combined,
                    on_cell=lambda done, total: progress((done, total), desc="Rendering the grid", unit="images"),
                )
            )
            summary = f"Rendered {len(result.cells)} images in {result.seconds:.1f} s."
            return str(result.path), str(result.path), "\n\n".join([summary, *result.notes])

        refresh.click(refresh_library, [chosen, uploads], [library, chosen], api_visibility="private")
        upload.upload(on_upload, [upload, chosen, uploads], [chosen, uploads, details], api_visibility="private")
        add_hub.click(on_hub, [hub_id, chosen, uploads], [chosen, details], api_visibility="private")
        chosen.change(on_choose, [chosen, uploads, together], [details, together], api_visibility="private")
        add_triggers.click(on_add_triggers, [prompt, chosen, uploads], prompt, api_visibility="private")
        render.click(
            on_render,
            [
                chosen,
                weights,
                seeds,
                prompt,
                negative,
                mode,
                control_image,
                steps,
                guidance,
                together,
                add_together,
                uploads,
            ],
            [grid_image, grid_file, notes],
            api_name="lora_grid",
            concurrency_limit=GRID_CONCURRENCY,
        )
        list_button = gr.Button("List LoRAs", visible=False)
        list_button.click(
            lambda: [entry_as_dict(entry) for entry in manager.available()],
            None,
            gr.JSON(visible=False),
            api_name="loras",
        )


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
        lines.append(f"trigger words: {', '.join(entry.trigger_words) or 'none recorded'}")
        lines += [f"`{key}`: {value}" for key, value in entry.fields.items()]
        blocks.append("  \n".join(lines))
    return "\n\n".join(blocks)


def add_trigger_words(prompt: str, words: list[str]) -> str:
    """Append the words the prompt does not already contain, comma-separated."""
    present = prompt.lower()
    missing = [word for word in dict.fromkeys(words) if word.lower() not in present]
    return ", ".join(part for part in [prompt.strip().rstrip(","), *missing] if part)


def together_choices(text: str, names: list[str]) -> tuple[LoraChoice, ...]:
    """`name: weight` pairs (file names, as shown) for the chosen LoRAs; a chosen LoRA left out gets weight 1."""
    weights = dict(_together_pairs(text))
    unknown = set(weights) - {Path(name).name for name in names}
    if unknown:
        raise gr.Error(f"The 'together' weights name LoRAs that are not chosen: {', '.join(sorted(unknown))}.")
    choices = []
    for name in names:
        try:
            choices.append(LoraChoice(name, float(weights.get(Path(name).name, 1.0))))
        except ValueError:
            raise gr.Error(f"The 'together' weight of {Path(name).name!r} is not a number.") from None
    return tuple(choices)


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


def _check_session(names: list[str], kept: list[str]) -> None:
    """An absolute path is an upload; only the session that uploaded it may use it."""
    for name in names:
        if Path(name).is_absolute() and name not in kept:
            raise gr.Error(f"{Path(name).name!r} is not one of this session's uploads; upload it again.")


def _plain_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except StudioError as error:
        raise gr.Error(str(error)) from None
