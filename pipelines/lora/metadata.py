"""What a LoRA file says about itself, read from its safetensors header only (no tensor is loaded).

Two conventions matter: kohya's `ss_*` fields (base model, training captions' tag counts in
`ss_tag_frequency`) and Stability's modelspec (`modelspec.title`, `modelspec.trigger_phrase`,
`modelspec.architecture`). The most frequent training tags are the likely trigger words.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from pipelines.lora.safety import SafetensorsHeader

TRIGGER_WORD_COUNT = 5
# Fields shown to the person as they are; anything longer is cut, headers can hold whole datasets.
SHOWN_FIELDS = (
    "modelspec.title",
    "modelspec.architecture",
    "modelspec.trigger_phrase",
    "modelspec.description",
    "modelspec.author",
    "ss_output_name",
    "ss_sd_model_name",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_num_train_images",
    "ss_num_epochs",
)
MAX_SHOWN_CHARS = 200


@dataclass(frozen=True)
class LoraMetadata:
    title: str | None = None
    family: str | None = None  # what the metadata claims; the tensors' shapes have the last word
    trigger_words: tuple[str, ...] = ()
    top_tags: tuple[tuple[str, int], ...] = ()
    fields: dict[str, str] = field(default_factory=dict)


def describe_metadata(header: SafetensorsHeader) -> LoraMetadata:
    metadata = header.metadata
    top_tags = tuple(_tag_counts(metadata.get("ss_tag_frequency")).most_common(TRIGGER_WORD_COUNT * 4))
    return LoraMetadata(
        title=metadata.get("modelspec.title") or metadata.get("ss_output_name") or None,
        family=family_from_metadata(metadata),
        trigger_words=_trigger_words(metadata.get("modelspec.trigger_phrase"), top_tags),
        top_tags=top_tags,
        fields={key: metadata[key][:MAX_SHOWN_CHARS] for key in SHOWN_FIELDS if metadata.get(key)},
    )


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    architecture = metadata.get("modelspec.architecture", "").lower()
    base_version = metadata.get("ss_base_model_version", "").lower()
    if architecture.startswith("stable-diffusion-xl") or base_version.startswith("sdxl"):
        return "sdxl"
    if (
        architecture.startswith("stable-diffusion-v2")
        or base_version.startswith("sd_v2")
        or metadata.get("ss_v2") == "True"
    ):
        return "sd2"
    if architecture.startswith("stable-diffusion-v1") or base_version.startswith("sd_v1"):
        return "sd15"
    if architecture.startswith("embedded-sd") or base_version == "embedded":
        return "embedded"
    return None


def _tag_counts(raw: str | None) -> Counter:
    """`ss_tag_frequency` is JSON text: {"<n>_<dataset folder>": {"tag": count, ...}, ...}."""
    counts: Counter = Counter()
    try:
        folders = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return counts
    for tags in folders.values() if isinstance(folders, dict) else ():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, int) and tag.strip():
                    counts[tag.strip()] += count
    return counts


def _trigger_words(trigger_phrase: str | None, top_tags: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    if trigger_phrase and trigger_phrase.strip():
        return tuple(word.strip() for word in trigger_phrase.split(",") if word.strip())
    return tuple(tag for tag, _ in top_tags[:TRIGGER_WORD_COUNT])
