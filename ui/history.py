"""The "History" tab: what this session made, newest first, and (run locally) the output folder's newest files; the
parameters of the image picked, and the PNG info tab's own "Send" that puts them back into their mode's tab.

What this session made is recorded in the main process, after each run's event succeeds, from the images the page
then shows: Gradio's cached PNGs, which keep their `parameters` chunk. So it works on ZeroGPU too, where the run
itself is a forked worker whose memory is gone when it returns; and it lives in a `gr.State`, so each visitor sees
only their own, and it goes when the page does. Only paths the server chose are ever opened: a pick is an index into
a list kept in server-side state, never a path the page sends.

Saving to disk happens where the results are made (`pipelines/outputs.py`, called by the mode and LoRA lab handlers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from pipelines.errors import StudioError
from pipelines.modes import Mode
from pipelines.outputs import RECENT_FILES, OutputFolder
from pipelines.png_info import read_parameters_text
from pipelines.studio import Studio
from ui.errors import shown_to_person
from ui.png_info import SUMMARY_HEADERS, ModeFields, preview_handler, send_handler

TAB_ID = "history"
SESSION_LIMIT = 100  # entries a session keeps (paths and captions only; the images stay in Gradio's cache)
THUMBNAIL_SIDE = 256  # the folder's files are shown small: each is decoded and encoded again at every refresh
GALLERY_LOOKS = dict(
    format="png", columns=4, fit_columns=False, height=360, object_fit="contain", elem_classes="pixelated",
    interactive=False,
)
Entry = Mapping[str, str]  # {"path": a file in Gradio's cache, "caption": what it was and when}


@dataclass(frozen=True)
class History:
    """The output folder and this session's list: made once per page, before the tabs that feed them."""

    outputs: OutputFolder
    made: gr.State  # this session's entries, newest first
    lists_folder: bool  # run locally: the folder is the person's own, so the tab lists it

    @classmethod
    def create(cls, studio: Studio) -> History:
        """Inside the page's `gr.Blocks`: the state is one of its components."""
        outputs = OutputFolder(studio.settings.output_dir)
        return cls(outputs, gr.State([]), lists_folder=outputs.enabled and not studio.settings.on_space)

    def follow_run(self, event, gallery: gr.Gallery, seed_used: gr.Number, mode: Mode) -> None:
        """Record a mode tab's images once its run `event` has shown them (a stopped run shows no seed: skipped)."""
        event.success(
            partial(record_run, mode.title), [gallery, seed_used, self.made], self.made,
            api_visibility="private", queue=False,
        )

    def follow_grid(self, event, grid_image: gr.Image) -> None:
        """Record the LoRA lab's grid once `event` has shown it (its `type` must be "filepath")."""
        event.success(record_grid, [grid_image, self.made], self.made, api_visibility="private", queue=False)


def build_history_tab(studio: Studio, history: History, tabs: gr.Tabs, mode_fields: ModeFields) -> None:
    """Create the tab inside `tabs`; `mode_fields` are the mode tabs' inputs, where "Send" puts the parameters."""
    with gr.Tab("History", id=TAB_ID) as tab:
        gr.Markdown(where_saved(studio, history))
        with gr.Row():
            with gr.Column(scale=3):
                session = gr.Gallery(label="Made in this session (newest first)", **GALLERY_LOOKS)
                session_paths = gr.State([])
                folder = gr.Gallery(
                    label=f"In the output folder (the newest {RECENT_FILES})", visible=history.lists_folder,
                    **GALLERY_LOOKS,
                )
                folder_paths = gr.State([])
                refresh = gr.Button("Refresh", size="sm")
            with gr.Column(scale=2):
                # The PNG info tab's panel, filled by its own preview, so "Send" behaves the same in both tabs.
                raw = gr.Textbox(label="Parameters text", lines=5, max_lines=16, interactive=False, buttons=["copy"])
                destination = gr.Markdown("Pick an image to see the parameters it was made with.")
                summary = gr.Dataframe(
                    headers=SUMMARY_HEADERS, interactive=False, label="What will be sent", wrap=True,
                    column_widths=["35%", "65%"],
                )
                notes = gr.Textbox(label="Notes: not sent, or to change before generating", interactive=False)
                send = gr.Button("Send", variant="primary", visible=False)

        private = dict(api_visibility="private")
        # A run's images join the session's gallery at once; the folder is read again when the tab is opened.
        listed = [session, session_paths, folder, folder_paths]
        history.made.change(show_session, history.made, listed[:2], queue=False, **private)
        tab.select(partial(show_history, history), history.made, listed, **private)
        refresh.click(partial(show_history, history), history.made, listed, **private)
        panel = [raw, destination, summary, notes, send]
        pick = picker(preview_handler(studio))
        session.select(pick, session_paths, panel, **private)
        folder.select(pick, folder_paths, panel, **private)
        targets = [tabs, *(component for fields in mode_fields.values() for component in fields.values())]
        send.click(
            send_handler(studio, tabs, mode_fields), inputs=[raw], outputs=targets, show_progress="hidden", **private
        )


def where_saved(studio: Studio, history: History) -> str:
    outputs = history.outputs
    if history.lists_folder:
        saved = (
            f"Every image, control map and grid is saved in `{outputs.root}`, a folder a day, with its parameters "
            "(`--outputs DIR` or `STUDIO_OUTPUT_DIR`; `none` saves nothing)."
        )
    elif outputs.enabled:
        saved = "Every image, control map and grid is also saved in this server's output folder."
    else:
        minutes = max(1, studio.settings.cache_age_s // 60)
        saved = (
            f"Nothing is saved on this server: each image stays for {minutes} min after it is made; download the "
            "ones you want to keep."
        )
    return f"{saved} Pick an image to read its parameters, then send them back to its tab."


def record_run(title: str, gallery: list[tuple[str, str | None]] | None, seed: float | None, made: list[Entry]):
    if seed is None or not gallery:
        return gr.skip()  # a stopped run: only previews were shown, and they carry no parameters
    when = datetime.now().strftime("%H:%M:%S")
    return _recorded([(path, f"{title}, {caption or ''}, {when}") for path, caption in gallery], made)


def record_grid(path: str | None, made: list[Entry]):
    if not path:
        return gr.skip()
    return _recorded([(path, f"LoRA grid, {datetime.now().strftime('%H:%M:%S')}")], made)


def _recorded(new: list[tuple[str, str]], made: list[Entry]):
    # A stopped grid's rows and a run's previews carry no parameters: there would be nothing to send back.
    kept = [{"path": path, "caption": caption} for path, caption in new if _has_parameters(path)]
    return [*kept, *made][:SESSION_LIMIT] if kept else gr.skip()


def _has_parameters(path: str) -> bool:
    try:
        return bool(read_parameters_text(path))
    except StudioError:
        return False


def show_session(made: list[Entry]) -> tuple[list[tuple[str, str]], list[str]]:
    """The session's gallery and the paths behind it, in the order shown; files Gradio's cache dropped are left out."""
    entries = [entry for entry in made if Path(entry["path"]).is_file()]
    return [(entry["path"], entry["caption"]) for entry in entries], [entry["path"] for entry in entries]


def show_history(history: History, made: list[Entry]) -> tuple:
    """`show_session`, then (run locally) the folder's newest files as small copies and the paths behind them."""
    if not history.lists_folder:
        return *show_session(made), gr.skip(), gr.skip()
    files, thumbnails = [], []
    for path in history.outputs.recent():
        thumbnail = _thumbnail(path)
        if thumbnail is not None:  # not an image (any more): left out
            files.append(str(path))
            thumbnails.append((thumbnail, history.outputs.shown_name(path)))
    return *show_session(made), thumbnails, files


def _thumbnail(path: Path) -> Image.Image | None:
    """The folder is not served as it is (Gradio would have to allow every file in it to every visitor): a small
    copy goes through Gradio's cache instead, without the text chunks (the parameters are read from the file)."""
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            small = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    small.info = {}
    return small


def picker(preview: Callable[[str], tuple]) -> Callable[..., tuple]:
    def pick(paths: list[str], selected: gr.SelectData) -> tuple:
        """The picked image's parameters text, and the PNG info tab's preview of what "Send" will put where.

        A failure (the file went, or holds no parameters) is a warning and an empty panel, so the previous image's
        settings are never left ready to send."""
        try:
            if not 0 <= selected.index < len(paths):
                raise gr.Error("That image is no longer listed; press Refresh.")
            with shown_to_person():
                text = read_parameters_text(paths[selected.index])
            return text, *preview(text)
        except gr.Error as error:
            gr.Warning(error.message)
            return "", "", [], "", gr.Button(visible=False)

    return pick
