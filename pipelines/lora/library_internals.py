"""Where the LoRA layer leans on diffusers', peft's and transformers' internals: nowhere else.

Everything else in `pipelines/lora` uses names the libraries publish. What is here has no public counterpart in
the versions requirements.txt pins (diffusers 0.42.1, peft 0.21.2, transformers 5.23.0), so an upgrade may move
or change it without notice; tests/test_lora_library_internals.py checks each one and fails naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
from diffusers.utils.peft_utils import _create_lora_config
from peft import LoraConfig
from peft.utils.other import get_pattern_key

Value = TypeVar("Value")

TRANSFORMERS_ADAPTER_LOGGER = "transformers.integrations.peft"
"""The logger transformers 5.23.0 writes a LOAD REPORT to on every adapter load into a text encoder (the
`logger` of `transformers.integrations.peft`, which `PeftAdapterMixin.load_adapter` hands to
`log_state_dict_report`). transformers offers no public switch for that report but the global verbosity, which
would silence everything else transformers says too."""


def adapter_config(
    state: Mapping[str, torch.Tensor],
    network_alphas: Mapping[str, float] | None,
    metadata: Mapping | None,
    model: torch.nn.Module,
    prefix: str,
) -> LoraConfig:
    """The LoraConfig diffusers makes when it loads a LoRA's `prefix` part into `model` as an adapter, without
    loading it. `state`: that part's PEFT keys (`<layer>.lora_A.weight`), prefix removed; `network_alphas` and
    `metadata` keyed `<prefix>.…`, as the whole LoRA has them.

    Leans on `diffusers.utils.peft_utils._create_lora_config` (diffusers 0.42.1), and replays what
    `PeftAdapterMixin.load_lora_adapter` does around it: alphas and metadata narrowed to the prefix, ranks keyed
    by their anchored lora_B key. diffusers has no public way to the config of a LoRA that is not loaded, and the
    compiled UNet's slot needs exactly that: its LoRAs never become adapters.
    """
    ranks = {f"^{key}": value.shape[1] for key, value in state.items() if "lora_B" in key and value.ndim > 1}
    alphas = _narrowed(network_alphas, prefix) if network_alphas else None
    return _create_lora_config(
        dict(state), alphas, _narrowed(metadata, prefix) if metadata is not None else None, ranks,
        model_state_dict=model.state_dict(),
    )


def pattern_value(patterns: Mapping[str, Value], layer: str, default: Value) -> Value:
    """What a LoraConfig's `rank_pattern` or `alpha_pattern` gives `layer`, `default` where no pattern matches.

    Leans on `peft.utils.other.get_pattern_key` (peft 0.21.2), the matcher `LoraModel._create_and_replace` uses
    when it builds each layer; peft exports no public one, and its patterns are regular expressions anchored in
    a way of its own.
    """
    return patterns.get(get_pattern_key(patterns.keys(), layer), default)


def to_peft_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (one component's keys, prefix removed) renamed to the PEFT keys diffusers' loaders give it.

    Replays the conversion of diffusers 0.42.1 before it loads: `PeftAdapterMixin.load_lora_adapter` for the
    UNet, `diffusers.loaders.lora_base._load_lora_into_text_encoder` for text encoders, with diffusers' public
    converters. No public API returns the keys a loader will use without loading them. Raises ValueError where
    diffusers cannot tell the keys' style either.
    """
    if any(".lora_A." in key for key in state):
        return state
    if component == "unet":
        return convert_unet_state_dict_to_peft(state)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))


def _narrowed(values: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    return {key.removeprefix(f"{prefix}."): value for key, value in values.items() if key.startswith(f"{prefix}.")}
