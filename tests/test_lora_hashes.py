"""LoRA hashes other tools recognise: A1111's LoRA hash and Civitai's AutoV2/AutoV3 of the embedded model's LoRAs,
checked against a second implementation written here; the cache; `Lora hashes` written on an image made with
LoRAs and matched back to the LoRA folder's files by PNG info."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipelines.lora import hashes
from pipelines.lora.hashes import lora_hashes
from pipelines.metadata import save_png
from pipelines.png_info import read_parameters_text, settings_from_parameters
from pipelines.request import GenerationRequest, LoraChoice
from pipelines.settings import EMBEDDED_LORAS, EMBEDDED_MODEL, Settings

STYLES = ("stripes", "mono")
NOT_HERE = "0123456789ab"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def whole_file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_bytes_sha256(path: Path) -> str:
    """SHA-256 of what follows the header: an unsigned 64-bit little-endian length, then that many bytes of JSON."""
    data = path.read_bytes()
    (header_length,) = struct.unpack_from("<Q", data)
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


def small_lora(path: Path, rank: int, metadata: dict[str, str] | None = None) -> Path:
    save_file({"lora_unet_x.lora_down.weight": torch.randn(rank, 4),
               "lora_unet_x.lora_up.weight": torch.randn(4, rank)}, path, metadata)
    return path


@pytest.fixture
def copied(tmp_path) -> dict[str, Path]:
    """The embedded LoRAs at paths of this test's own, so no other test has cached them."""
    return {style: Path(shutil.copy(EMBEDDED_LORAS / f"{style}.safetensors", tmp_path)) for style in STYLES}


@pytest.mark.parametrize("block_bytes", [hashes.BLOCK_BYTES, 4099, 5])
def test_hashes_equal_an_independent_implementation(copied, monkeypatch, block_bytes):
    """Blocks smaller than the header, and ones that end inside it, give the same hashes as one read."""
    monkeypatch.setattr(hashes, "BLOCK_BYTES", block_bytes)
    for path in copied.values():
        found = lora_hashes(path)
        assert found.file_sha256 == whole_file_sha256(path) and found.autov2 == whole_file_sha256(path)[:10]
        assert found.tensor_sha256 == tensor_bytes_sha256(path)
        assert found.a1111 == found.autov3 == tensor_bytes_sha256(path)[:12]
    assert lora_hashes(copied["stripes"]) != lora_hashes(copied["mono"])


def test_a1111_takes_the_hash_kohya_recorded_in_the_file(tmp_path):
    recorded = "ABCDEF0123456789" * 4
    path = small_lora(tmp_path / "kohya.safetensors", rank=2, metadata={"sshs_model_hash": recorded})
    found = lora_hashes(path)
    assert found.a1111 == recorded.lower()[:12]
    assert found.autov3 == tensor_bytes_sha256(path)[:12] != found.a1111


def test_a_file_is_read_once_until_its_size_or_time_changes(copied, monkeypatch, tmp_path):
    reads = []
    read = hashes._digests
    monkeypatch.setattr(hashes, "_digests", lambda path: reads.append(path) or read(path))
    path = copied["stripes"]
    first = lora_hashes(path)
    assert lora_hashes(path) == first and len(reads) == 1

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert lora_hashes(path) == first and len(reads) == 2  # touched: read again, same bytes

    mtime = path.stat().st_mtime_ns
    small_lora(path, rank=3)  # other bytes, another size, the same modification time
    os.utime(path, ns=(mtime, mtime))
    assert lora_hashes(path).tensor_sha256 == tensor_bytes_sha256(path) and len(reads) == 3


def test_the_cache_keeps_a_bounded_number_of_files(copied, monkeypatch):
    monkeypatch.setattr(hashes, "MAX_CACHED_FILES", 1)
    reads = []
    read = hashes._digests
    monkeypatch.setattr(hashes, "_digests", lambda path: reads.append(path) or read(path))
    lora_hashes(copied["stripes"])
    lora_hashes(copied["mono"])  # pushes stripes out
    lora_hashes(copied["stripes"])
    assert len(reads) == 3


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The embedded model with its two LoRAs, in a folder of this test's own."""
    from pipelines.studio import Studio

    folder = tmp_path_factory.mktemp("embedded-loras")
    for style in STYLES:
        shutil.copy(EMBEDDED_LORAS / f"{style}.safetensors", folder)
    return Studio(Settings(model=str(EMBEDDED_MODEL), lora_dir=str(folder), device="cpu"))


def a1111_text(loras: str, lora_hashes_value: str) -> str:
    """A1111's layout: the tags in the prompt, the hashes among the settings."""
    return (f"a red circle on a blue background {loras}\n"
            f'Steps: 4, Sampler: DDIM, CFG scale: 2, Seed: 3, Size: 64x64, Lora hashes: "{lora_hashes_value}"')


def test_an_image_made_with_loras_names_their_hashes_and_png_info_finds_the_files(studio, tmp_path):
    request = GenerationRequest(prompt="a red circle on a blue background", steps=2, seed=3,
                                loras=(LoraChoice("stripes", 0.8), LoraChoice("mono.safetensors", 1.0)))
    result = studio.generate(request)
    expected = {style: tensor_bytes_sha256(EMBEDDED_LORAS / f"{style}.safetensors")[:12] for style in STYLES}
    written = f'Lora hashes: "stripes: {expected["stripes"]}, mono.safetensors: {expected["mono"]}"'
    assert written in result.parameters[0]

    save_png(result.images[0], tmp_path / "made.png")
    read = settings_from_parameters(read_parameters_text(tmp_path / "made.png"), studio.served, studio.loras)
    assert read.values["loras"] == "stripes:0.8, mono.safetensors:1"
    assert "In the LoRA folder, by Lora hashes: stripes, mono.safetensors." in read.notes
    assert not any("Not in the LoRA folder" in note for note in read.notes)
    assert not any(note.startswith("Not used:") and "Lora hashes" in note for note in read.notes), read.notes


def test_without_loras_no_hashes_are_written(studio):
    assert "Lora hashes" not in studio.generate(GenerationRequest(prompt="a red circle", steps=1)).parameters[0]


def test_a_hash_that_is_not_here_is_named_and_its_lora_still_sent(studio):
    text = a1111_text("<lora:gone:0.7> <lora:stripes:1>", f"gone: {NOT_HERE}, stripes: {NOT_HERE[::-1]}")
    read = settings_from_parameters(text, studio.served, studio.loras)
    assert read.values["loras"] == "gone:0.7, stripes:1"
    assert f"Not in the LoRA folder: gone (hash {NOT_HERE}), stripes (hash {NOT_HERE[::-1]})." in read.notes
    assert any(note.startswith("The LoRA folder's stripes.safetensors is not the file the image used")
               for note in read.notes)


def test_a_renamed_lora_is_found_by_its_hash_in_another_tools_width(studio):
    """Civitai's AutoV2, in capitals: the file's whole SHA-256, 10 digits."""
    autov2 = whole_file_sha256(EMBEDDED_LORAS / "stripes.safetensors")[:10].upper()
    text = a1111_text("<lora:stripes_v2-000004:0.6>", f"stripes_v2-000004: {autov2}")
    read = settings_from_parameters(text, studio.served, studio.loras)
    assert read.values["loras"] == "stripes.safetensors:0.6"
    assert ("In the LoRA folder, by Lora hashes: stripes_v2-000004 (as stripes.safetensors, which is sent)."
            in read.notes)


def test_hashes_without_a_folder_to_look_in_are_listed_as_not_used(studio):
    text = a1111_text("<lora:stripes:1>", f"stripes: {NOT_HERE}")
    read = settings_from_parameters(text, studio.served)
    assert read.values["loras"] == "stripes:1"
    assert any(note.startswith("Not used:") and f"Lora hashes: stripes: {NOT_HERE}" in note for note in read.notes)


def test_a_lookup_reads_a_bounded_share_of_the_folder_and_says_what_it_left(tmp_path, monkeypatch):
    """A PNG naming a hash no file has must not make one request read a whole folder of LoRAs."""
    from pipelines.lora.sources import LoraLibrary

    for rank in (2, 3, 4):
        small_lora(tmp_path / f"l{rank}.safetensors", rank)
    size = max(path.stat().st_size for path in tmp_path.glob("*.safetensors"))
    monkeypatch.setattr(hashes, "MAX_SEARCH_BYTES", 2 * size)
    found, unsearched = hashes.find_local(LoraLibrary(tmp_path), {"0123456789ab"})
    assert found == {} and unsearched == 1
