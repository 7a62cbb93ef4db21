"""The output folder (`pipelines/outputs.py`): names, parameters, numbering under threads and restarts, the settings
that turn it on and off, a failed write as a note, and saving through the served app; the History tab's listing."""

from __future__ import annotations

import dataclasses
import errno
import threading
from datetime import date
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

import app
from pipelines import outputs as outputs_module
from pipelines.metadata import parse_parameters, save_png, tag_with_parameters
from pipelines.outputs import OutputFolder
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.settings import DEFAULT_OUTPUTS, Settings
from ui.history import History, picker, record_grid, record_run, show_history

DAY = date(2026, 12, 7)


def result(mode: str = "text", seeds=(42,), control: bool = False) -> GenerationResult:
    texts = [f"a red circle\nSteps: 2, Seed: {seed}, Mode: {mode}" for seed in seeds]
    images = [tag_with_parameters(Image.new("RGB", (8, 8), (seed % 256, 0, 0)), text)
              for seed, text in zip(seeds, texts)]
    control_map = Image.new("L", (8, 8), 255) if control else None
    return GenerationResult(images, list(seeds), texts, GenerationRequest(mode=mode), control_map)


def names(paths: list[Path]) -> list[str]:
    return [f"{path.parent.name}/{path.name}" for path in paths]


def test_images_and_the_control_map_get_a1111_like_names_and_keep_their_parameters(tmp_path):
    folder = OutputFolder(tmp_path, today=lambda: DAY)
    made = result("pose", seeds=(42, 43), control=True)
    paths = folder.save(made)
    assert names(paths) == ["2026-12-07/00000-pose-42.png", "2026-12-07/00001-pose-43.png",
                            "2026-12-07/00000-pose-42-control.png"]
    for path, text in zip(paths, [*made.parameters, made.parameters[0]]):
        with Image.open(path) as saved:
            assert saved.format == "PNG" and saved.text["parameters"] == text
    assert "parameters" not in made.control_map.info  # the shown map is left as it was
    assert sorted(path.name for path in (tmp_path / "2026-12-07").iterdir()) == sorted(path.name for path in paths)


def test_a_grid_keeps_every_text_entry(tmp_path):
    grid = Image.new("RGB", (16, 8))
    grid.info.update({"parameters": "base\nSeed: 1", "parameters r1 c0": "cell\nSeed: 1", "grid": "{}"})
    path = OutputFolder(tmp_path, today=lambda: DAY).save_grid(grid, "edge")
    assert names([path]) == ["2026-12-07/00000-edge-grid.png"]
    with Image.open(path) as saved:
        assert saved.text == {"parameters": "base\nSeed: 1", "parameters r1 c0": "cell\nSeed: 1", "grid": "{}"}


def test_numbers_run_on_after_a_restart_and_the_newest_are_listed_first(tmp_path):
    OutputFolder(tmp_path, today=lambda: date(2026, 12, 6)).save(result(seeds=(1, 2)))
    OutputFolder(tmp_path, today=lambda: DAY).save(result(seeds=(3,)))
    (tmp_path / "2026-12-07" / "notes.txt").write_text("not an output")
    restarted = OutputFolder(tmp_path, today=lambda: DAY)  # a new process sees the files and numbers on
    assert names(restarted.save(result("depth", seeds=(4,)))) == ["2026-12-07/00001-depth-4.png"]
    assert names(restarted.recent()) == ["2026-12-07/00001-depth-4.png", "2026-12-07/00000-text-3.png",
                                         "2026-12-06/00001-text-2.png", "2026-12-06/00000-text-1.png"]
    assert names(restarted.recent(limit=2)) == ["2026-12-07/00001-depth-4.png", "2026-12-07/00000-text-3.png"]


def test_numbers_stay_unique_under_concurrent_requests_and_no_file_is_overwritten(tmp_path):
    """Eight request threads on one folder object, and a second object (another process: no shared lock) beside them;
    every run has the same mode and seed, so only the numbers tell the files apart."""
    shared, other = OutputFolder(tmp_path, today=lambda: DAY), OutputFolder(tmp_path, today=lambda: DAY)
    saved: list[Path] = []
    errors: list[BaseException] = []

    def save_many(folder: OutputFolder) -> None:
        try:
            for _ in range(5):
                saved.extend(folder.save(result(seeds=(7,))))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=save_many, args=(shared if index < 8 else other,)) for index in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    files = sorted((tmp_path / "2026-12-07").iterdir())
    assert len(saved) == len(set(saved)) == len(files) == 50
    assert [path.name for path in files] == [f"{number:05d}-text-7.png" for number in range(50)]


def test_a_failed_write_is_a_note_and_the_result_is_kept(tmp_path, monkeypatch):
    made = result(seeds=(5, 6))
    OutputFolder(tmp_path, today=lambda: DAY).keep(made)
    assert made.notes == ["Saved to the output folder: 2026-12-07/00000-text-5.png, 2026-12-07/00001-text-6.png."]

    def full_disk(image, target):
        Path(target).write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(outputs_module, "save_png", full_disk)
    failing = result(seeds=(8,))
    OutputFolder(tmp_path, today=lambda: DAY).keep(failing)
    assert failing.notes == [
        "Not saved to the output folder (No space left on device): download what you want to keep."
    ]
    assert failing.images[0].size == (8, 8) and str(tmp_path) not in failing.notes[0]  # no server path shown
    assert sorted(path.name for path in (tmp_path / "2026-12-07").iterdir()) == ["00000-text-5.png", "00001-text-6.png"]

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    grid_notes: list[str] = []
    OutputFolder(not_a_folder).keep_grid(Image.new("RGB", (4, 4)), "text", grid_notes)
    assert grid_notes[0].startswith("Not saved to the output folder")


def test_off_means_nothing_is_written(tmp_path):
    made = result()
    OutputFolder(None).keep(made)
    assert made.notes == [] and OutputFolder(None).recent() == []


def test_saved_locally_by_default_off_on_a_space_unless_asked_and_the_flag_wins():
    assert Settings().output_dir is None  # settings built in code (tests) write nowhere unless told
    assert Settings.from_env({}).output_dir == str(DEFAULT_OUTPUTS)
    space = Settings.from_env({"SPACE_ID": "someone/studio"})
    assert space.output_dir is None and space.on_space
    assert Settings.from_env({"SPACE_ID": "someone/studio", "STUDIO_OUTPUT_DIR": "/data/out"}).output_dir == "/data/out"
    assert Settings.from_env({"STUDIO_OUTPUT_DIR": "None"}).output_dir is None
    from_env = Settings.from_env({"STUDIO_OUTPUT_DIR": "/env/out"})
    assert from_env.with_flags().output_dir == "/env/out"
    assert from_env.with_flags(outputs="/flag/out").output_dir == "/flag/out"
    assert from_env.with_flags(outputs="none").output_dir is None
    assert Settings.from_env({"SPACE_ID": "a/b"}).with_flags(outputs="/flag/out").output_dir == "/flag/out"
    assert app.parse_args(["--outputs", "/flag/out"]).outputs == "/flag/out"
    assert app.parse_args([]).outputs is None


def test_the_history_lists_this_session_newest_first_and_the_folder(tmp_path):
    folder = OutputFolder(tmp_path, today=lambda: DAY)
    older = folder.save(result("edge", seeds=(1,), control=True))
    newer = folder.save(result(seeds=(2, 3)))
    preview = tmp_path / "preview.png"
    Image.new("RGB", (8, 8)).save(preview)  # a run's preview carries no parameters

    made = record_run("Edge", [(str(older[0]), "seed 1")], 1, [])
    made = record_run("Text", [(str(newer[0]), "seed 2"), (str(newer[1]), "seed 3"), (str(preview), None)], 2, made)
    assert [entry["path"] for entry in made] == [str(newer[0]), str(newer[1]), str(older[0])]
    assert made[0]["caption"].startswith("Text, seed 2, ")
    assert isinstance(record_run("Text", [(str(preview), None)], None, made), type(gr.skip()))  # a stopped run
    grid = tmp_path / "grid.png"
    save_png(tag_with_parameters(Image.new("RGB", (8, 8)), "a grid's baseline\nSeed: 1"), grid)
    assert record_grid(str(grid), made)[0]["caption"].startswith("LoRA grid, ")
    assert isinstance(record_grid(str(preview), made), type(gr.skip()))  # a stopped grid's rows

    with gr.Blocks():
        history = History(folder, gr.State([]), lists_folder=True)
    session, session_paths, thumbnails, files = show_history(history, made)
    assert [caption for _, caption in session][0].startswith("Text, seed 2") and session_paths == [
        entry["path"] for entry in made
    ]
    assert [caption for _, caption in thumbnails] == names(folder.recent())
    assert files[0] == str(newer[1]) and max(thumbnail.size[0] for thumbnail, _ in thumbnails) <= 256

    shown = []
    pick = picker(lambda text: (shown.append(text) or "dest", [], "", gr.Button(visible=True)))
    text, *_ = pick(files, gr.SelectData(None, {"index": 3, "value": None}))
    assert text == shown[0] and parse_parameters(text)["Seed"] == "1"  # the edge run's control map: its parameters


@pytest.mark.usefixtures("one_torch_thread")
def test_the_served_app_saves_every_image_and_a_new_app_lists_them(tiny_studio, launch_app, tmp_path):
    from pipelines.studio import Studio

    studio = Studio(dataclasses.replace(tiny_studio.settings, output_dir=str(tmp_path)))
    with launch_app(studio) as client:
        gallery, _, seed, info = client.predict(prompt="a red circle", seed=11, steps=1, num_images=2,
                                                api_name="/text2img")
    today = date.today().isoformat()
    saved = sorted((tmp_path / today).iterdir())
    assert [path.name for path in saved] == ["00000-text-11.png", "00001-text-12.png"]
    with Image.open(saved[0]) as first, Image.open(gallery[0]["image"]) as shown:
        assert first.text["parameters"] == shown.info["parameters"]
    assert f"Saved to the output folder: {today}/00000-text-11.png" in info

    restarted = Studio(studio.settings)  # a new process: its History lists what the last one saved
    with gr.Blocks():
        history = History.create(restarted)
    assert history.lists_folder and show_history(history, [])[3] == [str(path) for path in reversed(saved)]


@pytest.mark.usefixtures("one_torch_thread")
def test_the_lora_labs_grid_is_saved_and_its_notes_say_where(tiny_studio, tmp_path):
    from embedded.synthetic_loras import lora_tensors, write_lora
    from pipelines.request import GridRequest
    from pipelines.studio import Studio
    from ui.lora_lab import render

    loras = tmp_path / "loras"
    loras.mkdir()
    write_lora(loras / "ink.safetensors", lora_tensors(tiny_studio.base, seed=3), {})
    studio = Studio(dataclasses.replace(tiny_studio.settings, lora_dir=str(loras)))
    folder = OutputFolder(tmp_path / "out", today=lambda: DAY)
    grid = GridRequest(GenerationRequest(prompt="a red circle", steps=1), ("ink.safetensors",), (1.0,), (1, 2))
    *_, (image, notes) = render(studio, grid, [], outputs=folder)
    (saved,) = (tmp_path / "out" / "2026-12-07").iterdir()
    assert saved.name == "00000-text-grid.png" and "Saved to the output folder: 2026-12-07/00000-text-grid.png" in notes
    with Image.open(saved) as file:
        assert file.text["parameters"] == image.info["parameters"] and "parameters r0 c1" in file.text
