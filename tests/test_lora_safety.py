"""Refusals: pickle files, forged headers, names that climb out of the folder, oversized uploads, the Hub."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import StudioError
from pipelines.lora.metadata import describe_metadata
from pipelines.lora.safety import contained_path, read_header
from pipelines.lora.sources import HubSource, LoraLibrary, UploadStore, parse_hub_spec


class _Trap:
    """Unpickling this writes a marker file: proof that a refused file was never unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def small_lora(path: Path, metadata: dict[str, str] | None = None) -> Path:
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.ones(2, 8),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.ones(8, 2),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def forged(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_files_are_refused_and_never_unpickled(tmp_path, suffix):
    marker = tmp_path / "marker.txt"
    trap = tmp_path / f"style{suffix}"
    trap.write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(StudioError, match="pickle-based"):
        read_header(trap)
    with pytest.raises(StudioError, match="pickle-based"):
        LoraLibrary(tmp_path).path(trap.name)
    with pytest.raises(StudioError, match="pickle-based"):
        UploadStore().add(trap)
    assert not marker.exists()


def test_other_extensions_are_refused(tmp_path):
    with pytest.raises(StudioError, match="not a .safetensors file"):
        LoraLibrary(tmp_path).path("notes.txt")


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd.safetensors", "sub/../../x.safetensors"])
def test_names_cannot_climb_out_of_the_folder(tmp_path, name):
    folder = tmp_path / "loras"
    folder.mkdir()
    small_lora(tmp_path / "outside.safetensors")
    with pytest.raises(StudioError, match="outside the LoRA folder"):
        LoraLibrary(folder).path(name)


def test_symlink_out_of_the_folder_is_refused_and_not_listed(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "link.safetensors").symlink_to(small_lora(tmp_path / "outside.safetensors"))
    small_lora(folder / "inside.safetensors")
    assert LoraLibrary(folder).names() == ["inside.safetensors"]
    with pytest.raises(StudioError, match="outside the LoRA folder"):
        contained_path(folder, "link.safetensors")


def test_a_bare_name_means_the_safetensors_file_of_that_name(tmp_path):
    small_lora(tmp_path / "ink.safetensors")
    assert LoraLibrary(tmp_path).path("ink") == tmp_path / "ink.safetensors"
    with pytest.raises(StudioError, match="never loads them"):
        LoraLibrary(tmp_path).path("ink.ckpt")


def test_missing_file_names_what_is_available(tmp_path):
    small_lora(tmp_path / "ink.safetensors")
    with pytest.raises(StudioError, match="no LoRA 'nope.safetensors'.*ink.safetensors"):
        LoraLibrary(tmp_path).path("nope.safetensors")


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16), "dtype 'I64'"),
        ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}, bytes(16), "declares shape"),
        ({"w": {"dtype": "F32", "shape": [1, 1, 1, 1, 4], "data_offsets": [0, 16]}}, bytes(16), "impossible shape"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "impossible shape"),
        ({"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4194304]}}, bytes(64), "truncated"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
            "overlap",
        ),
        ({"__metadata__": {"n": 3}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), "metadata"),
        ({}, b"", "no tensors"),
    ],
)
def test_forged_headers_are_refused_before_loading(tmp_path, header, data, reason):
    with pytest.raises(StudioError, match=reason):
        read_header(forged(tmp_path / "bad.safetensors", header, data))


def test_impossible_header_length_and_non_json_are_refused(tmp_path):
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(StudioError, match="header size is impossible"):
        read_header(huge)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\x00{")
    with pytest.raises(StudioError, match="not JSON"):
        read_header(garbage)


def test_file_size_cap(tmp_path):
    path = small_lora(tmp_path / "a.safetensors")
    with pytest.raises(StudioError, match="limit is"):
        read_header(path, max_file_bytes=64)


def test_uploads_are_capped_checked_and_read_where_gradio_put_them(tmp_path):
    store = UploadStore(max_bytes=10_000)
    (tmp_path / "gradio-cache").mkdir()
    upload = small_lora(tmp_path / "gradio-cache" / "My Style.safetensors")
    before = sorted(tmp_path.rglob("*"))
    kept = store.add(upload)
    assert kept == upload.resolve() and store.owns(kept)
    assert sorted(tmp_path.rglob("*")) == before  # nothing copied: Gradio's cache decides how long it lives
    assert not store.owns(tmp_path / "elsewhere.safetensors")
    big = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(100, 100)}, str(big))
    with pytest.raises(StudioError, match="uploads are limited to"):
        store.add(big)
    broken = forged(
        tmp_path / "broken.safetensors", {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, b""
    )
    with pytest.raises(StudioError, match="truncated"):
        store.add(broken)
    assert not store.owns(big) and not store.owns(broken)


def test_metadata_trigger_words_from_kohya_tags_and_modelspec(tmp_path):
    tags = json.dumps(
        {"10_ink": {"ink style": 40, "1girl": 12, "monochrome": 30}, "5_more": {"ink style": 5, "sketch": 9}}
    )
    kohya = read_header(
        small_lora(
            tmp_path / "k.safetensors",
            {"ss_tag_frequency": tags, "ss_base_model_version": "sd_v1", "ss_output_name": "inky"},
        )
    )
    info = describe_metadata(kohya)
    assert info.trigger_words[:3] == ("ink style", "monochrome", "1girl")
    assert info.family == "sd15" and info.title == "inky"
    spec = read_header(
        small_lora(
            tmp_path / "m.safetensors",
            {"modelspec.title": "Ink", "modelspec.trigger_phrase": "inkwash, bold lines", "ss_tag_frequency": tags},
        )
    )
    info = describe_metadata(spec)
    assert info.trigger_words == ("inkwash", "bold lines")  # the author's phrase beats tag counts
    assert info.title == "Ink"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hub:owner/repo", ("owner/repo", None)),
        ("hub:owner/repo/sub/x.safetensors", ("owner/repo", "sub/x.safetensors")),
    ],
)
def test_hub_specs(spec, expected):
    assert parse_hub_spec(spec) == expected


@pytest.mark.parametrize("spec", ["hub:owner", "hub:owner/repo/model.ckpt", "hub:owner/repo/../x.safetensors"])
def test_bad_hub_specs_are_refused(spec):
    with pytest.raises(StudioError):
        parse_hub_spec(spec)


def test_unreachable_hub_gives_a_plain_message(tmp_path):
    with pytest.raises(StudioError, match="cannot be reached"):
        HubSource(cache_dir=tmp_path).fetch("hub:someone/some-style-lora")
    with pytest.raises(StudioError, match="cannot be reached"):
        HubSource(cache_dir=tmp_path).fetch("hub:someone/some-style-lora/style.safetensors")


def fake_hub_cache(cache: Path, repo: str, files: list[str]) -> None:
    """The Hub cache layout huggingface_hub reads offline: refs/main -> snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name in files:
        target = root / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        small_lora(target) if name.endswith(".safetensors") else target.write_bytes(b"pickle")


def test_hub_lora_from_the_local_cache_safetensors_only(tmp_path):
    fake_hub_cache(tmp_path, "artist/ink", ["ink.safetensors", "ink.ckpt"])
    path = HubSource(cache_dir=tmp_path).fetch("hub:artist/ink")
    assert path.name == "ink.safetensors" and read_header(path).tensors
    fake_hub_cache(tmp_path, "artist/two", ["a.safetensors", "b.safetensors"])
    with pytest.raises(StudioError, match="several LoRA files.*hub:artist/two/a.safetensors"):
        HubSource(cache_dir=tmp_path).fetch("hub:artist/two")
    assert HubSource(cache_dir=tmp_path).fetch("hub:artist/two/b.safetensors").name == "b.safetensors"


def test_a_named_hub_file_over_the_limit_is_refused_before_download(tmp_path):
    fake_hub_cache(tmp_path, "artist/ink", ["ink.safetensors"])
    size = next(tmp_path.rglob("ink.safetensors")).stat().st_size
    with pytest.raises(StudioError, match="on the Hub; the limit is"):
        HubSource(cache_dir=tmp_path, max_file_bytes=size - 1).fetch("hub:artist/ink/ink.safetensors")
    assert HubSource(cache_dir=tmp_path, max_file_bytes=size).fetch("hub:artist/ink/ink.safetensors").is_file()
