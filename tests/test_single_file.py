"""Single-file checkpoints (A1111 / Civitai LDM layout) load offline from a `<name>.config/` folder."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from ldm_layout import pipeline_to_ldm, save_ldm_checkpoint
from safetensors.torch import save_file

from pipelines import loader
from pipelines.errors import StudioError
from pipelines.loader import load_base_pipeline

# Marker keys of the real checkpoints: text encoders as stored by SD1.x (CLIP-L), SD2 (OpenCLIP-H) and
# SDXL base (CLIP-L + OpenCLIP-bigG) / refiner (OpenCLIP-bigG only).
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
FAMILY_KEYS = {
    "sd15": ["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"],
    "sd2": ["cond_stage_model.model.token_embedding.weight", "cond_stage_model.model.positional_embedding"],
    "sdxl": [
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
    ],
    "sdxl_refiner": ["conditioner.embedders.0.model.positional_embedding"],
}


def copy_config_folder(diffusers_folder: Path, destination: Path) -> Path:
    """Everything `from_single_file(config=...)` reads: model_index.json, configs, tokenizer; no weights."""
    weights = shutil.ignore_patterns("*.safetensors")
    return Path(shutil.copytree(diffusers_folder, destination, ignore=weights))


def generate(pipe) -> np.ndarray:
    return pipe(
        "a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]


@pytest.fixture(scope="module")
def folder_pipe(tiny_sd_dir):
    pipe, _ = load_base_pipeline(str(tiny_sd_dir), "cpu", torch.float32)
    return pipe


@pytest.fixture(scope="module")
def checkpoint(folder_pipe, tiny_sd_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single-file")
    copy_config_folder(tiny_sd_dir, root / "tiny-sd.config")
    return save_ldm_checkpoint(folder_pipe, root / "tiny-sd.safetensors")


@pytest.fixture(scope="module")
def single_file_load(checkpoint):
    return load_base_pipeline(str(checkpoint), "cpu", torch.float32)


def test_ldm_layout_round_trips_through_diffusers_own_converters(folder_pipe):
    ldm = pipeline_to_ldm(folder_pipe)
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, dict(folder_pipe.unet.config)),
        "vae": convert_ldm_vae_checkpoint(ldm, dict(folder_pipe.vae.config)),
        "text_encoder": {
            key.removeprefix("text_model."): value for key, value in convert_ldm_clip_checkpoint(ldm).items()
        },
    }
    for component, converted in back.items():
        original = getattr(folder_pipe, component).state_dict()
        assert converted.keys() == original.keys(), component
        assert all(torch.equal(converted[key], original[key]) for key in original), component


def test_the_config_folder_holds_no_weights(checkpoint):
    # Otherwise the equality tests below could pass on weights that never came from the single file.
    assert not list(checkpoint.with_suffix(".config").rglob("*.safetensors"))


def test_single_file_loads_the_original_weights(single_file_load, folder_pipe):
    pipe, info = single_file_load
    assert type(pipe) is StableDiffusionPipeline
    assert info.family == "sd15"
    for component in ("unet", "vae", "text_encoder"):
        loaded, original = getattr(pipe, component).state_dict(), getattr(folder_pipe, component).state_dict()
        assert loaded.keys() == original.keys(), component
        unequal = [key for key in original if not torch.equal(loaded[key], original[key])]
        assert not unequal, f"{component}: {unequal[:5]}"


def test_single_file_generates_the_same_image_as_the_folder(single_file_load, folder_pipe):
    pipe, _ = single_file_load
    image = generate(pipe)
    assert image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image, generate(folder_pipe))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        load_base_pipeline(str(tmp_path / "nowhere.safetensors"), "cpu", torch.float32)


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"

    class RunsCodeWhenLoaded:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "model.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": RunsCodeWhenLoaded()}))
    with pytest.raises(StudioError, match=r"must be \.safetensors.*pickles"):
        load_base_pipeline(str(path), "cpu", torch.float32)
    assert not marker.exists()


def test_corrupt_safetensors_is_refused_plainly(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StudioError, match="not a readable .safetensors file"):
        load_base_pipeline(str(path), "cpu", torch.float32)


def test_file_without_ldm_weights_is_refused(tiny_sd_dir, tmp_path):
    diffusers_unet = tiny_sd_dir / "unet" / "diffusion_pytorch_model.safetensors"
    path = Path(shutil.copy(diffusers_unet, tmp_path / "unet.safetensors"))
    with pytest.raises(StudioError, match="not a Stable Diffusion checkpoint"):
        load_base_pipeline(str(path), "cpu", torch.float32)


def test_without_config_folder_or_hub_the_error_says_how_to_fix_it(checkpoint, tmp_path):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # the test must never reach the network
    path = Path(shutil.copy(checkpoint, tmp_path / "civitai-model.safetensors"))
    with pytest.raises(StudioError, match="does not carry its model's configuration") as raised:
        load_base_pipeline(str(path), "cpu", torch.float32)
    assert "'civitai-model.config'" in str(raised.value) and str(tmp_path) not in str(raised.value)


def test_config_folder_without_model_index_is_refused(checkpoint, tmp_path):
    path = Path(shutil.copy(checkpoint, tmp_path / "model.safetensors"))
    (tmp_path / "model.config").mkdir()
    with pytest.raises(StudioError, match="model_index.json"):
        load_base_pipeline(str(path), "cpu", torch.float32)


@pytest.mark.parametrize(
    ("family", "expected_class"),
    [
        ("sd15", StableDiffusionPipeline),
        ("sd2", StableDiffusionPipeline),
        ("sdxl", StableDiffusionXLPipeline),
    ],
)
def test_family_picks_pipeline_class_and_local_config(family, expected_class, tmp_path, monkeypatch):
    path = tmp_path / f"{family}.safetensors"
    save_file({key: torch.zeros(1) for key in [UNET_KEY, *FAMILY_KEYS[family]]}, str(path))
    (tmp_path / f"{family}.config").mkdir()
    (tmp_path / f"{family}.config" / "model_index.json").write_text("{}")
    calls = []

    def record(cls, checkpoint_path, **kwargs):
        calls.append((cls, checkpoint_path, kwargs))
        return "loaded"

    for pipeline_class in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        monkeypatch.setattr(pipeline_class, "from_single_file", classmethod(record))

    assert loader._load_single_file(str(path), torch.float32) == "loaded"
    assert calls == [
        (expected_class, str(path),
         {"dtype": torch.float32, "config": str(tmp_path / f"{family}.config"), "local_files_only": True}),
    ]


@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_sdxl_detection_uses_the_openclip_bigg_embedder(family):
    keys = {UNET_KEY, *FAMILY_KEYS[family]}
    assert loader._is_sdxl_checkpoint(keys) == (family == "sdxl")
