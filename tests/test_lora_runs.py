"""Checkpoints of one training run: where each stands (from its metadata or its name as trainers write it), and the
grid's rows in training order, each labelled with its epoch or step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.grid import BASELINE_LABEL, render_grid
from pipelines.lora.runs import TrainingPoint, in_training_order, training_point
from pipelines.request import GenerationRequest, GridRequest
from pipelines.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("name", "metadata", "expected"), [
    ("ink-000004.safetensors", {}, TrainingPoint("ink", epoch=4, output="ink")),  # kohya, --save_every_n_epochs
    ("ink-step00000500.safetensors", {}, TrainingPoint("ink", step=500, output="ink")),  # --save_every_n_steps
    ("out/checkpoint-300/pytorch_lora_weights.safetensors", {}, TrainingPoint("out", step=300, output="out")),
    ("ink.safetensors", {"ss_epoch": "6", "ss_steps": "1200"}, TrainingPoint("ink", 6, 1200, output="ink")),
    ("a-000001.safetensors", {"ss_session_id": "42"}, TrainingPoint("42", epoch=1, output="a")),
    ("ink.safetensors", {"ss_epoch": "six"}, TrainingPoint("ink", output="ink")),  # not a number: not a place
    ("pytorch_lora_weights.safetensors", {}, TrainingPoint("pytorch_lora_weights", output="pytorch_lora_weights")),
])
def test_a_checkpoint_says_where_it_stands_in_its_run(name, metadata, expected):
    assert training_point(name, metadata) == expected


def test_each_runs_checkpoints_come_together_in_training_order():
    names = ["b-000002.safetensors", "style.safetensors", "a-000003.safetensors", "b-000001.safetensors",
             "a-000001.safetensors"]
    points = {name: training_point(name, {}) for name in names}
    assert in_training_order(names, points) == [
        "b-000001.safetensors", "b-000002.safetensors", "style.safetensors", "a-000001.safetensors",
        "a-000003.safetensors",
    ]
    assert [points[name].shown for name in names] == ["b (epoch 2)", "", "a (epoch 3)", "b (epoch 1)", "a (epoch 1)"]


def test_a_grid_of_one_runs_checkpoints_renders_them_in_order_under_their_steps(tiny_sd_dir, tmp_path):
    from pipelines.studio import Studio

    studio = Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(tmp_path), device="cpu"))
    for step in (300, 100, 200):
        write_lora(tmp_path / f"run/checkpoint-{step}/pytorch_lora_weights.safetensors",
                   lora_tensors(studio.base, layout="peft", seed=step))
    names = [f"run/checkpoint-{step}/pytorch_lora_weights.safetensors" for step in (300, 100, 200)]
    grid = GridRequest(GenerationRequest(prompt="a circle", steps=1), tuple(names), "1", "1")
    result = render_grid(studio, grid)
    labels = list(dict.fromkeys(cell.row_label for cell in result.cells))
    assert labels[0] == BASELINE_LABEL
    assert labels[1:] == ["run (step 100) @ 1", "run (step 200) @ 1", "run (step 300) @ 1"]


def test_a_runs_checkpoints_uploaded_at_once_are_all_chosen(tiny_sd_dir, tmp_path):
    """The lab takes several uploads at once (a run's checkpoints); each is checked and chosen for the grid, in
    training order whatever order the file chooser gave, and said to be its run's epoch."""
    from pipelines.studio import Studio
    from ui.lora_lab import on_upload

    studio = Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(tmp_path / "folder"), device="cpu"))
    paths = [str(write_lora(tmp_path / f"ink-00000{epoch}.safetensors", lora_tensors(studio.base, seed=epoch)))
             for epoch in (2, 1)]
    menu, kept, details = on_upload(studio, paths, ["stripes.safetensors"], [])
    assert kept == [str((tmp_path / f"ink-00000{epoch}.safetensors").resolve()) for epoch in (1, 2)]
    assert menu.value == ["stripes.safetensors", *kept]
    assert [studio.loras.check(name).point.shown for name in kept] == ["ink (epoch 1)", "ink (epoch 2)"]
    assert details.index("checkpoint: ink (epoch 1)") < details.index("checkpoint: ink (epoch 2)")


def test_a_run_the_test_trains_comes_out_in_training_order_with_its_style_growing(tmp_path):
    """Three checkpoints of a stripes LoRA trained here on the embedded model (300 steps of 4 scenes, about 25 s on
    one thread), given to the grid out of order: the rows follow the run, and each row's stripes are stronger than
    the last (stripe energy, the evaluation's measure, over 8 seeds at 8 steps: 0.029, 0.050 and 0.062 against
    0.019 without)."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from embedded import measures, train, world
    from pipelines.settings import EMBEDDED_MODEL
    from pipelines.studio import Studio

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)
    scenes = [world.make_scene(seed, "object", style="stripes", allow_held_out=False)
              for seed in world.training_seeds(64)]
    data = {"style": np.array(["stripes"] * len(scenes)), "caption": np.array([scene.caption for scene in scenes])}
    with torch.no_grad():
        images = np.stack([scene.image for scene in scenes])
        latents = train.encode_latents(pipe.vae, images) * pipe.vae.config.scaling_factor
    config = replace(train.TrainConfig(), lora_steps=300, lora_batch=4)
    run = tmp_path / "stripes-run"
    train.train_lora(config, "stripes", data, latents, pipe.unet, pipe.text_encoder, pipe.tokenizer, run,
                     checkpoints=(75, 150, 300))

    studio = Studio(Settings(device="cpu", threads=1, lora_dir=str(tmp_path)))
    base = GenerationRequest(prompt="zkstripes, a red circle on a blue background", steps=8, preset="Fast")
    names = tuple(f"stripes-run/checkpoint-{step}/pytorch_lora_weights.safetensors" for step in (150, 300, 75))
    grid = render_grid(studio, GridRequest(base, names, "1", tuple(range(1, 9))))
    rows: dict[str, list[float]] = {}
    for cell in grid.cells:
        rows.setdefault(cell.row_label, []).append(measures.stripe_energy(np.asarray(cell.image)))
    assert list(rows) == [BASELINE_LABEL, "stripes-run (step 75) @ 1", "stripes-run (step 150) @ 1",
                          "stripes-run (step 300) @ 1"]
    energies = [float(np.mean(values)) for values in rows.values()]
    print("stripe energy by row:", dict(zip(rows, np.round(energies, 4))))
    assert energies[1] < energies[2] < energies[3] and energies[3] > energies[0] + 0.01
