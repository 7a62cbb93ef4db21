"""Recognise a LoRA's layout and family, and work out exactly which of its keys will land where.

diffusers converts kohya/A1111 (`lora_unet_*`, `lora_te*_`, LoCon convs), old diffusers
(`...processor.to_k_lora.down.weight`) and PEFT keys itself, but it stops on what it cannot convert
(LoHa `hada_*`, LoKr `lokr_*` in kohya naming), drops DoRA scales with a log line, and only logs keys
that match no layer. Here the same conversion runs first, on the keys and shapes alone, so a LoRA for
another model is refused before it is loaded; after loading, the keys handed to diffusers are compared
with what the adapter holds (`AdapterPlan.report`), so every key that did not land is told to the person.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

from pipelines.errors import StudioError
from pipelines.lora.library_internals import to_peft_keys

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
KOHYA_LORA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
FAMILY_NAMES = {"sd15": "SD 1.5", "sd2": "SD 2.x", "sdxl": "SDXL", "embedded": "the embedded model"}
CROSS_ATTENTION_FAMILIES = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
STANDARD_FAMILIES = ("sd15", "sd2", "sdxl")
SDXL_DEEP_TRANSFORMER = re.compile(r"transformer_blocks[._][1-9]")
COMPONENT_PREFIXES = ("unet", "text_encoder", "text_encoder_2")
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
ALPHA_OUTSIDE_KOHYA = "alpha values, which diffusers reads only in kohya files (the LoRA applies with alpha = rank)"


@dataclass
class AdapterPlan:
    """The converted state dict that will be loaded, and what was left out and why."""

    state_dict: dict[str, torch.Tensor]  # keys named after the model's own layers
    network_alphas: dict[str, float] | None
    adapter_metadata: dict | None
    layout: str
    skipped: Counter = field(default_factory=Counter)  # reason -> number of keys
    unmatched: list[str] = field(default_factory=list)  # converted layers found nowhere in the model
    loaded_layers: Counter = field(default_factory=Counter)  # component -> layers

    def report(self, label: str, sent: dict[str, torch.Tensor], held: dict[str, torch.Tensor]) -> list[str]:
        """Notes for the person on every key of the file that the model does not hold after loading.

        `sent` is what was handed to diffusers, `held` the adapter's tensors read back from the model, both
        keyed like `state_dict`. diffusers and peft only log keys they drop, so the comparison is what finds them.
        """
        notes = [f"{label}: {count} key(s) skipped: {reason}." for reason, count in self.skipped.items()]
        dropped = [key for key, value in sent.items() if not _holds(held, key, value)]
        sent_layers = Counter(_layer_of(key) for key in sent)
        dropped_layers = Counter(_layer_of(key) for key in dropped)
        absent = self.unmatched + [layer for layer, count in dropped_layers.items() if count == sent_layers[layer]]
        if absent:
            notes.append(
                f"{label}: {len(absent)} layer(s) match nothing in this model and were skipped "
                f"(for example {', '.join(absent[:3])})."
            )
        partial = [key for key in dropped if _layer_of(key) not in absent]
        if partial:
            notes.append(
                f"{label}: {len(partial)} key(s) skipped: diffusers found no place for them in the model "
                f"(for example {', '.join(partial[:3])})."
            )
        return notes


def detect_layout(keys: list[str]) -> str:
    if any(key.startswith(KOHYA_PREFIXES) for key in keys):
        return "LoCon (kohya)" if any(_is_kohya_conv(key) for key in keys) else "kohya/A1111"
    if any(".lora_A." in key or ".lora_B." in key for key in keys):
        return "PEFT"
    if any("_lora.down." in key or "_lora.up." in key for key in keys):
        return "diffusers (attention processors)"
    if any(".lora.down." in key or ".lora_linear_layer." in key for key in keys):
        return "diffusers"
    return "unknown"


def family_from_shapes(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Text-encoder-2 keys mean SDXL; otherwise the cross-attention width names a standard family."""
    if any(key.startswith(("lora_te2_", "text_encoder_2.")) for key in shapes):
        return "sdxl"
    width = cross_attention_width(shapes)
    if width is None and any(SDXL_DEEP_TRANSFORMER.search(key) for key in shapes):
        return "sdxl"  # e.g. self-attention-only sliders: only SDXL stacks several transformer layers per block
    return CROSS_ATTENTION_FAMILIES.get(width)


def cross_attention_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if _is_cross_attention_down(key) and len(shape) == 2:
            return shape[1]
    return None


def family_label(family: str | None) -> str:
    return FAMILY_NAMES.get(family, family or "an unknown model")


def plan_adapter(
    tensors: dict[str, torch.Tensor],
    components: dict[str, torch.nn.Module],
    file_metadata: dict[str, str] | None = None,
) -> AdapterPlan:
    """Convert `tensors` (real or on the meta device) the way diffusers will, and match them to layers.

    `components` maps "unet", "text_encoder" and, for SDXL, "text_encoder_2" to the pipeline's modules.
    Raises StudioError when a layer exists but has another shape (a LoRA for another model) or nothing
    at all would be loaded.
    """
    layout = detect_layout(list(tensors))
    kept, skipped = _split_supported(list(tensors), layout)
    is_sdxl = "text_encoder_2" in components
    loader = StableDiffusionXLLoraLoaderMixin if is_sdxl else StableDiffusionLoraLoaderMixin
    extra = {"unet_config": components["unet"].config} if is_sdxl else {}
    state = _with_component_prefix({key: tensors[key] for key in kept})
    converted, alphas = loader.lora_state_dict(state, **extra)
    adapter_metadata = _adapter_metadata(file_metadata or {})
    plan = AdapterPlan({}, alphas or None, adapter_metadata, layout, skipped)
    for prefix in COMPONENT_PREFIXES:
        part = {key: value for key, value in converted.items() if key.startswith(prefix + ".")}
        if not part:
            continue
        if prefix not in components:
            plan.unmatched.extend(sorted({key.split(".lora")[0] for key in part}))
            continue
        _match_component(prefix, part, components[prefix], plan)
    if not plan.state_dict:
        raise StudioError(_nothing_loadable_message(plan, tensors))
    return plan


def check_family(shapes: dict[str, tuple[int, ...]], base_family: str, claimed: str | None) -> None:
    """Refuse a LoRA made for another standard family, named from its shapes or, lacking those, its metadata.

    Shapes outside the standard families (tiny or custom models) are left to the layer-by-layer shape check
    in `plan_adapter`, which compares them with the loaded model itself.
    """
    family = family_from_shapes(shapes)
    if family is None and cross_attention_width(shapes) is None:
        family = claimed
    if family is None or family == base_family:
        return
    if family in STANDARD_FAMILIES or base_family in STANDARD_FAMILIES:
        raise StudioError(
            f"This LoRA was made for {family_label(family)}, but the loaded model is {family_label(base_family)}. "
            "Use a LoRA made for this model."
        )


def _is_cross_attention_down(key: str) -> bool:
    compact = key.replace(".", "_")
    is_to_k = "attn2_to_k" in compact or "attn2_processor_to_k" in compact
    return is_to_k and ("lora_A" in compact or "down_weight" in compact)


def _is_kohya_conv(key: str) -> bool:
    return key.startswith("lora_unet_") and any(
        part in key for part in ("_conv1.", "_conv2.", "_conv_shortcut.", "samplers_0_conv.", "_op.")
    )


def _split_supported(keys: list[str], layout: str) -> tuple[list[str], Counter]:
    skipped: Counter = Counter()
    if layout.startswith(("kohya", "LoCon")):
        modules: dict[str, list[str]] = {}
        for key in keys:
            modules.setdefault(key.split(".", 1)[0], []).append(key)
        kept = []
        for module, module_keys in modules.items():
            parts = {key.split(".", 1)[1] if "." in key else "" for key in module_keys}
            if not module.startswith(KOHYA_PREFIXES):
                skipped["not in a LoRA layout the studio knows"] += len(module_keys)
            elif {"lora_down.weight", "lora_up.weight"} <= parts:
                kept += [key for key in module_keys if key.split(".", 1)[1] in KOHYA_LORA_PARTS]
                for key in module_keys:
                    if key.split(".", 1)[1] not in KOHYA_LORA_PARTS:
                        skipped[_skip_reason(key)] += 1
            else:  # a whole LyCORIS module: its alpha goes with it
                weights = [key for key in module_keys if not key.endswith(".alpha")] or module_keys
                skipped[_skip_reason(weights[0])] += len(module_keys)
        return kept, skipped
    kept = []
    for key in keys:
        if "lora" in key and "magnitude" not in key and not key.endswith(".alpha"):
            kept.append(key)
        elif key.endswith(".alpha"):
            skipped[ALPHA_OUTSIDE_KOHYA] += 1
        else:
            skipped[_skip_reason(key)] += 1
    return kept, skipped


def _skip_reason(key: str) -> str:
    if ".hada_" in key:
        return "LoHa (LyCORIS) layers, which diffusers cannot apply"
    if ".lokr_" in key:
        return "LoKr (LyCORIS) layers, which diffusers cannot apply to SD/SDXL"
    if "dora_scale" in key or "magnitude" in key:
        return "DoRA magnitude scales, which diffusers drops (the LoRA applies without DoRA's normalisation)"
    if key.endswith((".diff", ".diff_b")):
        return "full weight differences (LyCORIS 'full'), which diffusers cannot apply"
    if key.endswith(".alpha"):
        return "alpha values without LoRA weights"
    return "keys in no LoRA layout the studio knows"


def _with_component_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old attention-processor files saved by `unet.save_attn_procs` have no `unet.` prefix."""
    if not state or any(key.startswith(KOHYA_PREFIXES) for key in state):
        return state
    if any(key.split(".", 1)[0] in COMPONENT_PREFIXES for key in state):
        return state
    return {f"unet.{key}": value for key, value in state.items()}


def _match_component(prefix: str, part: dict[str, torch.Tensor], module: torch.nn.Module, plan: AdapterPlan) -> None:
    inner = {key.removeprefix(prefix + "."): value for key, value in part.items()}
    try:
        peft = to_peft_keys(prefix, inner)
    except ValueError:  # diffusers cannot tell the key style apart either, so it would not load them
        plan.unmatched.extend(sorted({f"{prefix}.{key.split('.lora')[0]}" for key in inner}))
        return
    layers = dict(module.named_modules())
    by_layer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft.items():
        layer, _, part_name = key.partition(".lora_")
        by_layer.setdefault(layer, {})[part_name] = value
    for layer_name, parts in by_layer.items():
        found = _model_layer_name(layers, layer_name)
        if found is None:
            plan.unmatched.append(f"{prefix}.{layer_name}")
            continue
        _check_shapes(prefix, layer_name, parts, layers[found])
        plan.loaded_layers[prefix] += 1
        for part_name, value in parts.items():
            plan.state_dict[f"{prefix}.{found}.lora_{part_name}"] = value


def _model_layer_name(layers: dict[str, torch.nn.Module], layer_name: str) -> str | None:
    """CLIP text models are flattened in recent transformers; files may or may not say `text_model.`."""
    candidates = (layer_name, f"text_model.{layer_name}", layer_name.removeprefix("text_model."))
    return next((name for name in candidates if name in layers), None)


def _layer_of(key: str) -> str:
    return key.partition(".lora_")[0]


def _holds(held: dict[str, torch.Tensor], key: str, sent: torch.Tensor) -> bool:
    """peft copies what it loads into the layer's own dtype and device; compare after the same cast."""
    return key in held and torch.equal(held[key], sent.to(held[key].device, held[key].dtype))


def _check_shapes(prefix: str, layer_name: str, parts: dict[str, torch.Tensor], target: torch.nn.Module) -> None:
    base = getattr(target, "base_layer", target)
    if isinstance(base, torch.nn.Linear):
        size_in, size_out = base.in_features, base.out_features
    elif isinstance(base, torch.nn.Conv2d):
        size_in, size_out = base.in_channels, base.out_channels
    else:
        raise StudioError(f"The LoRA targets {prefix}.{layer_name}, a {type(base).__name__}, which LoRA cannot change.")
    down, up = parts.get("A.weight"), parts.get("B.weight")
    if down is None or up is None or down.shape[1] != size_in or up.shape[0] != size_out:
        found = f"{tuple(down.shape) if down is not None else '?'} / {tuple(up.shape) if up is not None else '?'}"
        raise StudioError(
            f"This LoRA does not fit the loaded model: its layer {prefix}.{layer_name} has shapes {found}, but the "
            f"model's layer takes {size_in} and gives {size_out} features. It was made for another model."
        )
    if down.shape[0] != up.shape[1]:  # peft would stop on a size mismatch deep inside the load
        raise StudioError(
            f"This LoRA is damaged: its layer {prefix}.{layer_name} has factors of shapes {tuple(down.shape)} / "
            f"{tuple(up.shape)}, whose ranks ({down.shape[0]} and {up.shape[1]}) differ."
        )


def _adapter_metadata(file_metadata: dict[str, str]) -> dict | None:
    raw = file_metadata.get(ADAPTER_METADATA_KEY)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


def _nothing_loadable_message(plan: AdapterPlan, tensors: dict[str, torch.Tensor]) -> str:
    reasons = "; ".join(f"{count} key(s): {reason}" for reason, count in plan.skipped.items())
    if plan.unmatched:
        reasons = "; ".join(filter(None, [reasons, f"{len(plan.unmatched)} layer(s) match nothing in this model"]))
    return (
        f"Nothing in this LoRA ({len(tensors)} tensors, layout: {plan.layout}) can be applied to this model: {reasons}."
    )
