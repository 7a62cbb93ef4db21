"""Issue 25's "Done when" through the API, with the real `gradio_client` against the whole app served in-process:
three checkpoints of one kohya run, a no-LoRA row, a weight range and a block preset render as one `/lora_grid`,
and `/png_info` on that grid's PNG gives the checkpoints' hashes back, matched to the LoRA folder's files.

`/lora_grid` takes no uploads (a page's uploads live in its session), so the run lies in the LoRA folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
from gradio_client import handle_file
from PIL import Image

from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora
from pipelines.a1111 import read_lora_hashes
from pipelines.layout import naming_every_lora
from pipelines.metadata import parse_parameters
from pipelines.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = (2, 4, 6)
CHECKPOINTS = [f"myrun-{epoch:06d}.safetensors" for epoch in EPOCHS]
WEIGHTS = "0-1 step 0.5, 1@out"
ROW_WEIGHTS = ("0", "0.5", "1", "1@out")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run-loras")


@pytest.fixture(scope="module")
def client(tiny_sd_dir, folder, launch_app):
    """The app on the tiny model, its LoRA folder holding one run's checkpoints: the same LoRA, stronger each epoch
    (as training makes it), with kohya's `ss_epoch`."""
    from pipelines.studio import Studio

    studio = Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(folder), device="cpu"))
    for epoch, name in zip(EPOCHS, CHECKPOINTS, strict=True):
        tensors = lora_tensors(studio.base, seed=25, strength=0.2 * epoch / 2)
        write_lora(folder / name, tensors, {**kohya_metadata(title="myrun"), "ss_epoch": str(epoch)})
    with launch_app(studio) as served:
        yield served


def tensor_bytes_sha256(path: Path) -> str:
    """A1111's LoRA hash, written again here: SHA-256 of what follows the safetensors header (its 8-byte
    little-endian length, then that many bytes of JSON)."""
    data = path.read_bytes()
    (header_length,) = struct.unpack_from("<Q", data)
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


def test_a_runs_checkpoints_render_as_one_grid_and_png_info_gives_their_hashes_back(client, folder):
    shuffled = random.Random(25).sample(CHECKPOINTS, len(CHECKPOINTS))
    grid, notes = client.predict(
        lora_names=shuffled, weights=WEIGHTS, seeds="1", prompt="a red circle", negative_prompt="", mode="text",
        image=None, steps=2, guidance_scale=4.0, together="", add_together=False, api_name="/lora_grid",
    )
    assert f"Rendered {1 + len(CHECKPOINTS) * len(ROW_WEIGHTS)} images" in notes
    with Image.open(grid) as png:
        chunks = dict(png.text)
    rows = [cell["row_label"] for cell in json.loads(chunks["grid"])["cells"]]
    assert rows == ["no LoRA"] + [f"myrun (epoch {epoch}) @ {weight}" for epoch in EPOCHS for weight in ROW_WEIGHTS]
    assert parse_parameters(chunks["parameters r4 c0"])["lora_blocks"] == {CHECKPOINTS[0]: "out"}

    text, settings = client.predict(image=handle_file(grid), api_name="/png_info")
    local = {name: tensor_bytes_sha256(folder / name)[:12] for name in CHECKPOINTS}
    assert dict(read_lora_hashes(parse_parameters(text)["Lora hashes"])) == local
    assert settings["values"]["loras"] == ""  # the grid's settings are its baseline's: no LoRA to send
    found = next(note for note in settings["notes"] if note.startswith("In the LoRA folder, by Lora hashes"))
    assert all(name in found for name in CHECKPOINTS)
    assert not [note for note in settings["notes"] if note.startswith("Not in the LoRA folder")]


BASELINE = "a cat\nSteps: 20, Sampler: DDIM, Seed: 1, Mode: text, Version: diffusion-studio"


def test_a_grids_parameters_name_every_cells_lora_files_before_the_version():
    first = 'a cat <lora:a:1>\nSteps: 20, Seed: 1, Lora hashes: "a: 111111111111", Version: diffusion-studio'
    second = 'a cat <lora:b:1>\nSteps: 20, Seed: 1, Lora hashes: "b: 222222222222", Version: diffusion-studio'
    named = naming_every_lora(BASELINE, [BASELINE, first, second, first])
    assert named == BASELINE.replace(", Version", ', Lora hashes: "a: 111111111111, b: 222222222222", Version')
    assert naming_every_lora(BASELINE, [BASELINE]) == BASELINE  # a grid without LoRAs is left as it was
    assert naming_every_lora(first, [first]) == first
