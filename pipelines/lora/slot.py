"""LoRAs on a compiled UNet, switched without recompiling.

A compiled UNet is a graph of the modules it was compiled with: loading, deleting or activating a LoRA adapter
changes them, and torch compiles again (tens of seconds on a GPU, for every new set). So before the UNet is
compiled it gets one adapter, the slot, on every layer of its transformer blocks (attention, feed-forward and
proj_in/out: the layers LoRAs train), with zero weights. A request's LoRAs are written into the slot's weights in
place, their factors side by side along the rank:

    W x + sum_i w_i s_i B_i A_i x  =  W x + [w_1 s_1 B_1, w_2 s_2 B_2, ...] [A_1; A_2; ...] x

(w: the LoRA's weight in the request, s: its alpha / rank), which is exact. The graph never changes, so a switch
never recompiles; with no LoRA the slot holds zeros and adds exactly 0. diffusers' `enable_lora_hotswap` prepares
the slot, as it does for its own hot-swapping: its scalings become tensors, so nothing the compiled graph reads is a
Python number a switch could change. Text encoders are not compiled; their LoRA layers load and switch as usual.

LoRA layers outside the transformer blocks (a LoCon's ResNet convolutions) have no place in the slot and are left
out, with a note.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pipelines.errors import StudioError
from pipelines.lora.library_internals import adapter_config, pattern_value

SLOT = "studio_slot"
UNET = "unet"
UNET_PREFIX = f"{UNET}."
_serials = itertools.count()


@dataclass
class SlotLora:
    """One LoRA's UNet factors, ready to be written into the slot: layer -> (A, B, alpha / rank)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    outside: list[str]  # layers the slot does not cover, left out
    serial: int = field(default_factory=lambda: next(_serials))  # tells two LoRAs apart, unlike id() after a free

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in self.factors.values())

    def rank(self, layer: str) -> int:
        return self.factors[layer][0].shape[0] if layer in self.factors else 0

    @property
    def max_rank(self) -> int:
        return max((a.shape[0] for a, _, _ in self.factors.values()), default=0)


def slot_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The Linear and Conv2d layers of the UNet's transformer blocks, by name: where the slot goes."""
    return {
        name: module
        for name, module in unet.named_modules()
        if ".attentions." in f".{name}" and isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        and ".lora_" not in name and not name.endswith("base_layer")
    }


class LoraSlot:
    """The compiled UNet's one LoRA adapter, holding the factors of the active LoRAs, `rank` wide in all."""

    def __init__(self, unet: torch.nn.Module, rank: int) -> None:
        self.unet = unet
        self.rank = rank
        targets = slot_layers(unet)
        # Before the first adapter loads, as diffusers asks: the slot's scalings become tensors.
        unet.enable_lora_hotswap(target_rank=rank)
        unet.load_lora_adapter(
            _zero_lora(targets, rank, unet.dtype), prefix=None, adapter_name=SLOT, metadata=_unit_scale(targets, rank)
        )
        self.layers = {name: unet.get_submodule(name) for name in targets}
        self.active: tuple[tuple[int, float], ...] = ()

    def covers(self, layer: str) -> bool:
        return layer in self.layers

    def prepare(self, state: dict[str, torch.Tensor], network_alphas: dict | None, metadata: dict | None) -> SlotLora:
        """A LoRA's UNet part (keys `unet.<layer>.lora_A.weight`, as the studio's plan has them) as slot factors."""
        unet_state = {key.removeprefix(UNET_PREFIX): value for key, value in state.items()
                      if key.startswith(UNET_PREFIX)}
        if not unet_state:
            return SlotLora({}, [])
        scales = _scales(unet_state, network_alphas, metadata, self.unet)
        factors, outside = {}, []
        device, dtype = next(iter(self.layers.values())).weight.device, self.unet.dtype
        for layer, scale in scales.items():
            if layer not in self.layers:
                outside.append(layer)
                continue
            down, up = unet_state[f"{layer}.lora_A.weight"], unet_state[f"{layer}.lora_B.weight"]
            factors[layer] = (down.to(device, dtype), up.to(device, dtype), scale)
        lora = SlotLora(factors, sorted(outside))
        if lora.max_rank > self.rank:
            raise StudioError(
                f"With --compile, a LoRA's rank can be at most {self.rank} (STUDIO_COMPILE_LORA_RANK); this one's is "
                f"{lora.max_rank}."
            )
        return lora

    def write(self, loras: Sequence[tuple[SlotLora, float | Callable[[str], float]]]) -> None:
        """Make the slot hold exactly `loras`, each with its weight, or with block weights a (hashable) function of
        the layer's name giving it; the same set again writes nothing."""
        key = tuple((lora.serial, weight) for lora, weight in loras)
        if key == self.active:
            return
        for layer in self.layers:
            total = sum(lora.rank(layer) for lora, _ in loras)
            if total > self.rank:
                raise StudioError(
                    f"With --compile, the LoRAs active at once can add up to rank {self.rank} in a layer "
                    f"(STUDIO_COMPILE_LORA_RANK); these add up to {total} in {layer}. Use fewer LoRAs at once."
                )
        with torch.no_grad():
            for layer, module in self.layers.items():
                slot_a, slot_b = module.lora_A[SLOT].weight, module.lora_B[SLOT].weight
                slot_a.zero_()
                slot_b.zero_()
                offset = 0
                for lora, weight in loras:
                    if layer not in lora.factors:
                        continue
                    down, up, scale = lora.factors[layer]
                    rank = down.shape[0]
                    slot_a[offset : offset + rank].copy_(down)
                    layer_weight = weight(layer) if callable(weight) else weight
                    slot_b[:, offset : offset + rank].copy_(up * (scale * layer_weight))
                    offset += rank
        self.active = key


def _zero_lora(targets: dict[str, torch.nn.Module], rank: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name, layer in targets.items():
        if isinstance(layer, torch.nn.Conv2d):
            down = torch.zeros(rank, layer.in_channels // layer.groups, *layer.kernel_size, dtype=dtype)
            up = torch.zeros(layer.out_channels, rank, 1, 1, dtype=dtype)
        else:
            down = torch.zeros(rank, layer.in_features, dtype=dtype)
            up = torch.zeros(layer.out_features, rank, dtype=dtype)
        state[f"{name}.lora_A.weight"] = down
        state[f"{name}.lora_B.weight"] = up
    return state


def _unit_scale(targets: dict[str, torch.nn.Module], rank: int) -> dict:
    """The slot's LoraConfig: alpha = rank makes every layer's scaling 1, as each LoRA's own scale goes into its B."""
    return {"r": rank, "lora_alpha": rank, "target_modules": sorted(targets)}


def _scales(state: dict[str, torch.Tensor], network_alphas: dict | None, metadata: dict | None,
            unet: torch.nn.Module) -> dict[str, float]:
    """layer -> alpha / rank (alpha / sqrt(rank) with rsLoRA), as peft sets each layer's scaling when diffusers
    loads the LoRA as an adapter."""
    config = adapter_config(state, network_alphas, metadata, unet, prefix=UNET)
    scales = {}
    for key in state:
        if ".lora_A." not in key:
            continue
        layer = key.split(".lora_A.")[0]
        rank = pattern_value(config.rank_pattern, layer, config.r)
        alpha = pattern_value(config.alpha_pattern, layer, config.lora_alpha)
        scales[layer] = alpha / (math.sqrt(rank) if config.use_rslora else rank)
    return scales
