"""The library internals pipelines/lora/library_internals.py leans on are still there and still do what it expects.

Each failure names the internal and the installed version, so an upgrade that moves one says what to update.
pipelines.lora is imported inside the tests, not at the top: an internal gone at import time then fails here by
name instead of as a collection error.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from importlib.metadata import version

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
from peft import get_peft_model_state_dict

from embedded.synthetic_loras import lora_tensors

PROBE = "probe"
UPDATE = "update pipelines/lora/library_internals.py"

# (library, module, name, parameters passed by position in order, parameters passed by keyword)
PRIVATE_NAMES = [
    ("diffusers", "diffusers.utils.peft_utils", "_create_lora_config",
     ("state_dict", "network_alphas", "metadata", "rank_pattern_dict"), ("model_state_dict",)),
    ("peft", "peft.utils.other", "get_pattern_key", ("pattern_keys", "key_to_match"), ()),
]


@pytest.mark.parametrize(("library", "module", "name", "positional", "keywords"), PRIVATE_NAMES,
                         ids=[f"{module}.{name}" for _, module, name, _, _ in PRIVATE_NAMES])
def test_each_private_name_is_still_there_and_takes_the_arguments_passed(library, module, name, positional, keywords):
    where = f"{module}.{name} ({library} {version(library)})"
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(f"{where} is gone; {UPDATE}.")
    parameters = list(inspect.signature(found).parameters)
    assert parameters[: len(positional)] == list(positional), (
        f"{where} now takes {parameters}, not {list(positional)} first; {UPDATE}."
    )
    missing = [keyword for keyword in keywords if keyword not in parameters]
    assert not missing, f"{where} no longer takes {missing}; {UPDATE}."


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def pipe(tiny_sd_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd_dir)


def _mixed_ranks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The to_k layers cut to rank 2, so the config needs a rank pattern; the others keep rank 4."""
    cut = {}
    for key, value in tensors.items():
        if "to_k" in key and key.endswith(("lora_down.weight", "lora_A.weight")):
            value = value[:2]
        elif "to_k" in key and key.endswith(("lora_up.weight", "lora_B.weight")):
            value = value[:, :2]
        cut[key] = value.contiguous()
    return cut


def _kohya_with_alphas(pipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = lora_tensors(pipe, layout="kohya", rank=4, text_encoder=False)
    tensors.update({key: torch.tensor(2.0) for key in tensors if key.endswith(".alpha")})
    return _mixed_ranks(tensors), {}


def _peft_with_adapter_metadata(pipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """As diffusers' save_lora_weights writes it: LoraConfig arguments keyed `unet.…` in the header."""
    from pipelines.lora.formats import ADAPTER_METADATA_KEY

    tensors = _mixed_ranks(lora_tensors(pipe, layout="peft", rank=4, text_encoder=False))
    layers = sorted({key.removeprefix("unet.").split(".lora_")[0] for key in tensors})
    config = {"r": 4, "lora_alpha": 8, "target_modules": layers,
              "rank_pattern": {layer: 2 for layer in layers if layer.endswith("to_k")}}
    return tensors, {ADAPTER_METADATA_KEY: json.dumps({f"unet.{key}": value for key, value in config.items()})}


@pytest.mark.parametrize("make_lora", [_kohya_with_alphas, _peft_with_adapter_metadata])
def test_the_config_gives_each_layer_the_scaling_peft_gives_it_when_diffusers_loads_the_lora(pipe, make_lora):
    from pipelines.lora.formats import plan_adapter
    from pipelines.lora.library_internals import adapter_config, pattern_value

    tensors, file_metadata = make_lora(pipe)
    plan = plan_adapter(tensors, {"unet": pipe.unet}, file_metadata)
    unet_state = {key.removeprefix("unet."): value for key, value in plan.state_dict.items()}
    config = adapter_config(unet_state, plan.network_alphas, plan.adapter_metadata, pipe.unet, prefix="unet")
    layers = {key.split(".lora_")[0] for key in unet_state}
    predicted = {layer: pattern_value(config.alpha_pattern, layer, config.lora_alpha)
                 / pattern_value(config.rank_pattern, layer, config.r) for layer in layers}

    alphas = None if plan.adapter_metadata else plan.network_alphas
    pipe.load_lora_into_unet(plan.state_dict, network_alphas=alphas, metadata=plan.adapter_metadata, unet=pipe.unet,
                             adapter_name=PROBE)
    loaded = {layer: float(pipe.unet.get_submodule(layer).scaling[PROBE]) for layer in layers}
    assert len(set(loaded.values())) > 1  # the rank pattern matters, or the comparison proves little
    assert predicted == pytest.approx(loaded), (
        f"diffusers {version('diffusers')} / peft {version('peft')} scale a LoRA's layers otherwise than "
        f"adapter_config and pattern_value (_create_lora_config, get_pattern_key) predict; {UPDATE}."
    )


def test_the_replayed_key_conversion_gives_the_keys_diffusers_loads(pipe):
    from pipelines.lora.library_internals import to_peft_keys

    # kohya files come out of lora_state_dict in diffusers' older, non-PEFT key styles: both get converted.
    converted, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(lora_tensors(pipe, layout="kohya", rank=4))
    pipe.load_lora_into_unet(converted, network_alphas=None, unet=pipe.unet, adapter_name=PROBE)
    pipe.load_lora_into_text_encoder(converted, network_alphas=None, text_encoder=pipe.text_encoder,
                                     prefix="text_encoder", adapter_name=PROBE)
    for component in ("unet", "text_encoder"):
        inner = {key.removeprefix(f"{component}."): value for key, value in converted.items()
                 if key.startswith(f"{component}.")}
        assert not any(".lora_A." in key for key in inner)  # the conversion really runs
        # diffusers also drops CLIP's `text_model.` where transformers flattened it; formats.py matches both.
        replayed = {key.removeprefix("text_model."): value for key, value in to_peft_keys(component, inner).items()}
        held = get_peft_model_state_dict(getattr(pipe, component), adapter_name=PROBE)
        assert replayed.keys() == held.keys(), (
            f"diffusers {version('diffusers')} converts {component} LoRA keys otherwise than to_peft_keys replays "
            f"(for example {sorted(replayed.keys() ^ held.keys())[:2]}); {UPDATE}."
        )
        assert all(torch.equal(replayed[key], held[key]) for key in held)


def test_transformers_logs_its_adapter_load_report_on_the_logger_the_manager_quiets(pipe):
    from pipelines.lora.library_internals import TRANSFORMERS_ADAPTER_LOGGER

    handler = Collect()
    logger = logging.getLogger(TRANSFORMERS_ADAPTER_LOGGER)
    logger.addHandler(handler)
    try:
        for seed in (1, 2):  # the report lists the other adapter's layers as missing
            state = lora_tensors(pipe, layout="peft", rank=4, seed=seed)
            pipe.load_lora_into_text_encoder(state, network_alphas=None, text_encoder=pipe.text_encoder,
                                             prefix="text_encoder", adapter_name=f"{PROBE}{seed}")
    finally:
        logger.removeHandler(handler)
    assert any("LOAD REPORT" in message for message in handler.messages), (
        f"transformers {version('transformers')} logged no adapter LOAD REPORT on {TRANSFORMERS_ADAPTER_LOGGER!r}: "
        f"it moved to another logger, or is gone and the manager need not quiet it; {UPDATE}."
    )
