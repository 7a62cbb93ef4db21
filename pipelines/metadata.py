"""Generation parameters as text: the A1111 `parameters` chunk the studio writes, and the layouts other tools write.

A1111's layout: the prompt (LoRAs as `<lora:name:weight>` tags), then `Negative prompt: ...` when there is
one, then one line of `Key: value` pairs. A value with a comma, colon, quote or line break is written as
a JSON string, as A1111 does, so a ControlNet unit (`ControlNet 0: "Module: canny, Weight: 1, ..."`) is one
value whose inside is another such line.

ComfyUI (an API-format graph as JSON) and InvokeAI (JSON) are read into the same vocabulary, A1111's setting
names (Steps, Sampler, Schedule type, CFG scale, Seed, Size, Denoising strength, Model), so one mapping turns
every layout into the studio's parameters (`pipelines/png_info.py`).

The text is someone else's, and parsing holds the GIL, so one slow parse stalls every client of the server.
Every parser here is linear in its input (no pattern can backtrack over a run of text, no loop re-scans what an
earlier step scanned), and the text's length is checked first, against limits named in the refusal.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from pipelines.a1111 import (
    BATCH_SIZE,
    CFG_SCALE,
    DENOISING_STRENGTH,
    MODE,
    MODEL,
    NEGATIVE_PROMPT,
    SAMPLER,
    SCHEDULE_TYPE,
    SEED,
    SIZE,
    STEPS,
    is_block_argument,
    lora_tag,
    read_block_arguments,
)
from pipelines.errors import StudioError

# AUTOMATIC1111's own infotexts are a few KB (a long prompt, a long negative prompt, ControlNet units and hashes);
# 64 KiB leaves ten times that, and at that size even text built to be slow parses in milliseconds.
MAX_PARAMETERS_CHARS = 64 * 1024
# A ComfyUI API graph takes 100 to 200 bytes a node (the default graph 1.5 KB, 500 nodes about 60 KB); 1 MiB is
# also the most Pillow inflates from one compressed PNG text chunk (PngImagePlugin.MAX_TEXT_CHUNK). The C json
# module parses it linearly (about 10 ms for 1 MiB of small nodes here, up to 0.2 s when a garbage collection
# falls in it); a graph is then followed through at most MAX_GRAPH_VISITS links, so a cycle or a chain ends.
MAX_JSON_CHARS = 1024 * 1024
MAX_GRAPH_VISITS = 2_000
_LIMIT_REASONS = {
    MAX_PARAMETERS_CHARS: "in AUTOMATIC1111's layout (64 KiB), whose own texts are a few thousand",
    MAX_JSON_CHARS: "of ComfyUI or InvokeAI JSON (1 MiB), far more than their graphs and metadata take",
}
A1111 = "AUTOMATIC1111"
COMFYUI = "ComfyUI"
INVOKEAI = "InvokeAI"

# A1111's extra-network tags; `lyco` is the older LyCORIS extension's spelling of the same thing. `[^<>]+` stops
# at the next `<`, so the attempts at each `<` never scan the same text twice.
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^<>]+)>")
_ONE_TRAILING_TAG = re.compile(r" <(?:lora|lyco):[^<>]+>")
_SPACE = re.compile(r"\s*")
# A JSON-style quoted value. Possessive: a quote that never closes costs one scan, never a scan per position.
_QUOTED = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NEEDS_QUOTES = (",", ":", '"', "\n")
_NEGATIVE = f"\n{NEGATIVE_PROMPT}: "
_SHOWN_NODES = 12


@dataclass
class ParsedText:
    """What a tool's text says, in A1111's vocabulary: `settings` by A1111's names, other keys by the tool's own.

    `notes` are the reader's: what it met and could not say in A1111's terms (a second sampler, a LoRA's separate
    text-encoder weight, nodes it did not read).
    """

    source: str
    prompt: str = ""
    negative_prompt: str = ""
    loras: list[tuple[str, float]] = field(default_factory=list)
    partly_read_lora_tags: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lora_blocks: dict[str, str] = field(default_factory=dict)  # a LoRA's block weights by its name, where it has some


def format_parameters(
    prompt: str,
    negative_prompt: str,
    settings: dict[str, object],
    loras: Sequence[tuple[str, float] | tuple[str, float, str]] | None = None,
) -> str:
    """`settings` keeps its order: Steps, Sampler, CFG scale, Seed, Size, Model, ... as A1111 writes them. `loras`:
    (name, weight) or (name, weight, block weights)."""
    tags = "".join(f" {lora_tag(*lora)}" for lora in loras or [])
    lines = [prompt + tags]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PROMPT}: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def check_length(text: str, limit: int) -> None:
    """Refuse a text past `limit` (MAX_PARAMETERS_CHARS or MAX_JSON_CHARS), naming the limit and why it is enough."""
    if len(text) > limit:
        reason = f" {_LIMIT_REASONS[limit]}" if limit in _LIMIT_REASONS else ""
        raise StudioError(
            f"The parameters text has {len(text):,} characters; the studio reads at most {limit:,}{reason}."
        )


def parse_generation_text(text: str) -> ParsedText:
    """Any supported tool's text: a ComfyUI graph or InvokeAI metadata (JSON), else A1111's layout."""
    check_length(text, MAX_JSON_CHARS)
    document = _json_object(text)
    if document is None and len(text) > MAX_PARAMETERS_CHARS and text.lstrip().startswith("{"):
        raise StudioError(
            f"The parameters text has {len(text):,} characters of what looks like JSON but does not parse (or nests "
            f"too deep); past {MAX_PARAMETERS_CHARS:,} characters only ComfyUI's or InvokeAI's JSON is read."
        )
    if document is None:
        return _parsed_a1111(text)
    if _is_comfyui_graph(document):
        return parse_comfyui_graph(document)
    if isinstance(document.get("image"), dict):
        return parse_invokeai_legacy(document)
    if INVOKEAI_KEYS & document.keys():
        return parse_invokeai_metadata(document)
    keys = ", ".join(_short(key, 30) for key in list(document)[:8])
    raise StudioError(
        f"The text is JSON in a layout the studio does not read (keys: {keys}); it reads ComfyUI's API graph and "
        "InvokeAI's metadata."
    )


def parse_parameters(text: str) -> dict[str, object]:
    """Read back what `format_parameters` (or A1111) wrote: prompt, negative prompt, LoRAs, settings.

    `loras` lists (name, weight) from the prompt's tags; `partly_read_lora_tags` lists the tags with more than a
    weight (A1111's separate text-encoder and UNet weights), of which only the first weight was read.
    """
    check_length(text, MAX_PARAMETERS_CHARS)
    head, settings = _split_settings_line(text.replace("\r\n", "\n"))
    prompt, marker, negative = head.partition(_NEGATIVE)
    if not marker and prompt.startswith(_NEGATIVE[1:]):
        prompt, negative = "", prompt.removeprefix(_NEGATIVE[1:])
    tags = [_lora_from_tag(inner) for inner in _LORA_TAG.findall(prompt)]
    return {
        "prompt": _without_lora_tags(prompt),
        "negative_prompt": negative,
        "loras": [(name, weight) for name, weight, _, _ in tags],
        "lora_blocks": {name: blocks for name, _, blocks, _ in tags if blocks},
        "partly_read_lora_tags": [tag for _, _, _, tag in tags if tag],
        **settings,
    }


def parse_settings_line(line: str) -> dict[str, str]:
    """`Key: value, Key: "quoted, value"` as a dict of text values, quotes removed."""
    check_length(line, MAX_PARAMETERS_CHARS)
    return {key.strip(): _unquote(value.strip()) for key, value in _settings_pairs(line)}


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: an 8-byte character code, then the text (EXIF 2.3, section 4.6.5, tag 0x9286).

    A1111 and Forge write "UNICODE\\0" and big-endian UTF-16 (piexif.helper.UserComment.dump(..., encoding="unicode"));
    some tools write little-endian, which shows as zero bytes at odd places in Latin text.
    """
    if isinstance(raw, str):  # written with the ASCII type instead of UNDEFINED
        return raw.rstrip("\0")
    code, body = raw[:8], raw[8:]
    if code == b"UNICODE\0":
        return _utf16(body).rstrip("\0")
    if code == b"JIS\0\0\0\0\0":
        return body.decode("shift_jis", "replace").rstrip("\0")
    # "ASCII\0\0\0", or eight zero bytes: undefined, which in practice is UTF-8 or ASCII
    return body.decode("utf-8", "replace").rstrip("\0")


def tag_with_parameters(image: Image.Image, parameters: str) -> Image.Image:
    """Attach `parameters`; Gradio and `save_png` write an image's text `info` into the PNG it saves."""
    image.info["parameters"] = parameters
    return image


def save_png(image: Image.Image, target: str | Path | BinaryIO) -> None:
    """Save as PNG with every text entry of `image.info` as a text chunk."""
    chunks = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            chunks.add_text(key, value)
    image.save(target, format="PNG", pnginfo=chunks)


# AUTOMATIC1111's layout


def _parsed_a1111(text: str) -> ParsedText:
    parsed = parse_parameters(text)
    settings = {key: value for key, value in parsed.items() if isinstance(value, str)}
    prompt, negative = settings.pop("prompt"), settings.pop("negative_prompt")
    return ParsedText(A1111, prompt, negative, parsed["loras"], parsed["partly_read_lora_tags"], settings,
                      lora_blocks=parsed["lora_blocks"])


def _split_settings_line(text: str) -> tuple[str, dict[str, str]]:
    """The prompt part and the settings; like A1111, a last line counts as settings only if it looks like them."""
    head, _, last = text.rpartition("\n")
    settings = parse_settings_line(last)
    if len(settings) >= 3 or STEPS.key in settings:
        return head, settings
    return text, {}


def _settings_pairs(line: str) -> Iterator[tuple[str, str]]:
    """The raw (key, value) pairs of a settings line, in one pass.

    A key is a run without a colon or comma that ends at a colon (a run that ends at a comma is skipped); its value
    is a quoted string if one closes right before a comma or the end, else the text up to the next comma. Each
    search starts where the last one ended, so no character is scanned more than a few times: a long run without
    a colon costs one `find`, where a pattern tried at every position of it costs time quadratic in its length.
    """
    position, end = 0, len(line)
    while position < end:
        colon = line.find(":", position)
        if colon < 0:
            return
        key_start = max(position, line.rfind(",", position, colon) + 1)
        if key_start == colon:  # nothing between the last comma and the colon: no key here
            position = colon + 1
            continue
        value, position = _value_at(line, _SPACE.match(line, colon + 1).end())
        yield line[key_start:colon], value


def _value_at(line: str, start: int) -> tuple[str, int]:
    """The value that starts at `start`, and where the next pair starts."""
    if line.startswith('"', start):
        quoted = _QUOTED.match(line, start)
        if quoted:
            after = _SPACE.match(line, quoted.end()).end()
            if after == len(line) or line[after] == ",":
                return quoted.group(), after + 1
    comma = line.find(",", start)
    if comma < 0:
        return line[start:], len(line)
    return line[start:comma], comma + 1


def _without_lora_tags(prompt: str) -> str:
    """The prompt the model was conditioned on: A1111 removes each tag alone, leaving the text around it.

    `format_parameters` appends each tag after one space, so the tags at the very end go with their space (or,
    as a `$` would match it, before one final line break).
    """
    body, line_end = (prompt[:-1], "\n") if prompt.endswith("\n") else (prompt, "")
    end = _trailing_tags_start(body)
    return _LORA_TAG.sub("", body[:end]) + line_end


def _trailing_tags_start(text: str) -> int:
    """Where the run of ` <lora:...>` tags at the end of `text` starts; each step scans only the tag it removes."""
    end = len(text)
    while text.endswith(">", 0, end):
        start = text.rfind(" <", 0, end)
        if start < 0 or not _ONE_TRAILING_TAG.fullmatch(text, start, end):
            break
        end = start
    return end


def _lora_from_tag(inner: str) -> tuple[str, float, str, str]:
    """A1111's `name:weight`, `name:te:unet` or `name:te=0.8:unet=0.5`, with block weights as LoRA Block Weight
    (`lbw=OUTALL`) or SD.Next (`in=0:mid=1:out=0`) write them: name, weight, block-weight spec, the tag if partly read.

    Arguments are the trailing parts that are numbers or `key=value`, so a name with a colon (`hub:owner/repo`)
    stays whole. A1111's first weight is the text encoder's and the UNet's unless a second one is given.
    """
    parts = inner.split(":")
    count = 0
    while count < len(parts) - 1 and _is_tag_argument(parts[-1 - count]):
        count += 1
    name = ":".join(parts[: len(parts) - count]).strip()
    blocks, arguments = read_block_arguments(parts[len(parts) - count:])
    if not arguments:
        return name, 1.0, blocks, ""
    first = arguments[0].removeprefix("te=")
    try:
        weight = float(first)
    except ValueError:
        return name, 1.0, blocks, f"<lora:{inner}>"
    return name, weight, blocks, f"<lora:{inner}>" if len(arguments) > 1 else ""


def _is_tag_argument(part: str) -> bool:
    if is_block_argument(part):
        return True
    key, equals, value = part.partition("=")
    try:
        float(value if equals else key)
    except ValueError:
        return False
    return not equals or key.strip().isidentifier()


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in _NEEDS_QUOTES) else text


def _unquote(value: str) -> str:
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    if not _QUOTED.fullmatch(value):  # no JSON string (a bare quote inside): skip json's costly exception
        return value[1:-1]
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value[1:-1]


def _utf16(body: bytes) -> str:
    """UTF-16 in the byte order its zero bytes or byte-order mark show; big-endian (piexif's) when neither does."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", "replace")
    body = body[: len(body) // 2 * 2]
    little_endian = body[1::2].count(0) > body[0::2].count(0)
    return body.decode("utf-16-le" if little_endian else "utf-16-be", "replace")


# ComfyUI: the API-format graph its SaveImage node (nodes.py) writes as the `prompt` text chunk, beside the
# editor's `workflow`. Each node is {"class_type": ..., "inputs": {...}}; an input is a literal, or a link
# [node id, output index] to the node that makes it.

SAMPLER_SEEDS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}
# ComfyUI's sampler and scheduler names (comfy/samplers.py) as A1111's, where the studio has the sampler.
COMFYUI_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM", "ddpm": "DDPM",
    "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM",
}
COMFYUI_SCHEDULES = {
    "normal": None,  # ComfyUI's default spacing, as A1111's "Automatic"
    "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform", "simple": "Simple",
    "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal", "linear_quadratic": "Linear Quadratic",
}
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
CHECKPOINT_NAMES = {
    "CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name", "unCLIPCheckpointLoader": "ckpt_name",
    "ImageOnlyCheckpointLoader": "ckpt_name", "UNETLoader": "unet_name",
}
IMAGE_ENCODERS = {"VAEEncode": "img2img", "VAEEncodeForInpaint": "inpaint"}
TEXT_INPUTS = ("text", "text_g", "text_l", "string", "value", "prompt")
# Where nodes that pass a number or name on (a seed node, a primitive) keep it
VALUE_INPUTS = ("value", "seed", "int", "float", "number", "string", "text")
SAMPLER_INPUTS = ("steps", "cfg", "seed", "noise_seed", "sampler_name", "scheduler", "denoise", "add_noise",
                  "start_at_step", "end_at_step", "return_with_leftover_noise")
# Nodes that only decode and save the picture: nothing in them has a place in a tab, or a meaning to lose.
PICTURE_ONLY_NODES = {"VAEDecode", "SaveImage", "PreviewImage"}
# KSamplerAdvanced's switches and their values that change nothing against a KSampler
ADVANCED_DEFAULTS = {"add_noise": "enable", "start_at_step": 0, "return_with_leftover_noise": "disable"}


def parse_comfyui_graph(document: Mapping[str, object]) -> ParsedText:
    """The settings of the graph's first sampling pass, followed back from its KSampler node."""
    graph = _ComfyGraph(document)
    sampler_id = graph.first_pass_sampler()
    if sampler_id is None:
        kinds = sorted({node["class_type"] for node in graph.nodes.values()})
        raise StudioError(
            "The ComfyUI graph has no KSampler or KSamplerAdvanced node, where the studio reads its settings "
            f"(its nodes: {', '.join(_short(kind, 40) for kind in kinds[:_SHOWN_NODES])})."
        )
    parsed = ParsedText(COMFYUI)
    sampler = graph.nodes[sampler_id]
    graph.read.add(sampler_id)
    inputs = sampler["inputs"]
    parsed.prompt = _comfy_prompt(graph, inputs.get("positive"), "positive", parsed.notes)
    parsed.negative_prompt = _comfy_prompt(graph, inputs.get("negative"), "negative", parsed.notes)
    _comfy_sampling(graph, sampler, parsed)
    _comfy_model(graph, inputs.get("model"), parsed)
    _comfy_latent(graph, inputs.get("latent_image"), parsed)
    parsed.notes += graph.unread_notes()
    return parsed


class _ComfyGraph:
    def __init__(self, document: Mapping[str, object]) -> None:
        self.nodes: dict[str, dict] = {
            str(node_id): node for node_id, node in document.items() if _is_node(node)
        }
        self.read: set[str] = set()  # nodes whose settings went into the reading
        self.visits_left = MAX_GRAPH_VISITS
        self.cut_short = False

    def follow(self, link: object) -> tuple[str, dict] | None:
        """The node a link points to; None for a literal, a dangling link, or once the visits are spent."""
        if not _is_link(link):
            return None
        if self.visits_left <= 0:
            self.cut_short = True
            return None
        self.visits_left -= 1
        node_id = str(link[0])
        node = self.nodes.get(node_id)
        return (node_id, node) if node is not None else None

    def literal(self, value: object, names: tuple[str, ...]) -> object:
        """An input's value: a literal as it is; a link through the nodes that pass one on (primitive, text)."""
        seen: set[str] = set()
        while _is_link(value):
            found = self.follow(value)
            if found is None or found[0] in seen:
                return None
            node_id, node = found
            seen.add(node_id)
            self.read.add(node_id)
            value = next((node["inputs"][name] for name in names if name in node["inputs"]), None)
        return value

    def first_pass_sampler(self) -> str | None:
        """The sampler that starts from an empty latent or an encoded image, not from another sampler's result."""
        samplers = sorted((node_id for node_id, node in self.nodes.items() if node["class_type"] in SAMPLER_SEEDS),
                          key=_node_order)
        first_passes = [node_id for node_id in samplers if not self._refines_another(node_id)]
        return (first_passes or samplers or [None])[0]

    def _refines_another(self, sampler_id: str) -> bool:
        link, seen = self.nodes[sampler_id]["inputs"].get("latent_image"), set()
        while (found := self.follow(link)) and found[0] not in seen:
            node_id, node = found
            if node["class_type"] in SAMPLER_SEEDS:
                return True
            seen.add(node_id)
            link = node["inputs"].get("samples")
        return False

    def unread_notes(self) -> list[str]:
        unread = [f"{_short(node['class_type'], 40)} (node {_short(node_id, 12)})"
                  for node_id, node in sorted(self.nodes.items(), key=lambda item: _node_order(item[0]))
                  if node_id not in self.read and node["class_type"] not in PICTURE_ONLY_NODES]
        notes = []
        if unread:
            more = f", and {len(unread) - _SHOWN_NODES} more" if len(unread) > _SHOWN_NODES else ""
            notes.append(f"Not read from the ComfyUI graph: {', '.join(unread[:_SHOWN_NODES])}{more}.")
        if self.cut_short:
            notes.append(f"The ComfyUI graph was followed through {MAX_GRAPH_VISITS:,} links only; it has more.")
        return notes


def _comfy_prompt(graph: _ComfyGraph, link: object, side: str, notes: list[str]) -> str:
    """The text of the CLIPTextEncode nodes behind a sampler's `positive` or `negative` input, breadth first.

    The way back passes nodes that take the same side (ControlNetApplyAdvanced's `positive`) or take
    conditioning (ConditioningCombine's `conditioning_1`, ...); each node is visited once, so a cycle ends.
    """
    texts, queue, seen = [], deque([link]), set()
    while queue:
        found = graph.follow(queue.popleft())
        if found is None or found[0] in seen:
            continue
        node_id, node = found
        seen.add(node_id)
        inputs = node["inputs"]
        if "CLIPTextEncode" in node["class_type"]:
            graph.read.add(node_id)
            text = graph.literal(next((inputs[name] for name in TEXT_INPUTS if name in inputs), None), TEXT_INPUTS)
            if isinstance(text, str):
                texts.append(text)
            continue
        if side in inputs:
            queue.append(inputs[side])
        else:
            queue.extend(value for name, value in inputs.items() if name.startswith("conditioning"))
    if len(texts) > 1:
        notes.append(f"The {side} conditioning joins {len(texts)} prompts; the first was read, the others were not: "
                     + "; ".join(repr(_short(text, 60)) for text in texts[1:4]) + ".")
    return texts[0] if texts else ""


def _comfy_sampling(graph: _ComfyGraph, sampler: dict, parsed: ParsedText) -> None:
    inputs, kind = sampler["inputs"], sampler["class_type"]
    literal = {name: graph.literal(inputs[name], (name, *VALUE_INPUTS)) for name in SAMPLER_INPUTS if name in inputs}
    settings = parsed.settings
    for key, name in ((STEPS.key, "steps"), (CFG_SCALE.key, "cfg"), (SEED.key, SAMPLER_SEEDS[kind])):
        _put_scalar(settings, key, literal.get(name))
    sampler_name, schedule = literal.get("sampler_name"), literal.get("scheduler")
    if isinstance(sampler_name, str):
        settings[SAMPLER.key] = COMFYUI_SAMPLERS.get(sampler_name, sampler_name)
    schedule_type = COMFYUI_SCHEDULES.get(schedule, schedule) if isinstance(schedule, str) else None
    if schedule_type:
        settings[SCHEDULE_TYPE] = schedule_type
    denoise = literal.get("denoise")
    if _is_number(denoise) and denoise < 1:  # only part of the noise: the graph starts from an image
        settings[DENOISING_STRENGTH.key] = _described(denoise)
        settings[MODE.key] = "img2img"
    for name, default in ADVANCED_DEFAULTS.items():
        if name in literal and literal[name] != default:
            _put_scalar(settings, f"{kind} {name}", literal[name])
    steps, end = literal.get("steps"), literal.get("end_at_step")
    if isinstance(end, int) and isinstance(steps, int) and end < steps:
        settings[f"{kind} end_at_step"] = str(end)


def _comfy_model(graph: _ComfyGraph, link: object, parsed: ParsedText) -> None:
    """LoRA loaders on the way from the sampler's `model` back to the checkpoint loader, in the order applied."""
    loras, seen = [], set()
    while (found := graph.follow(link)) and found[0] not in seen:
        node_id, node = found
        seen.add(node_id)
        inputs, kind = node["inputs"], node["class_type"]
        if kind in LORA_LOADERS:
            graph.read.add(node_id)
            loras.append(_comfy_lora(graph, inputs, parsed.notes))
        elif kind in CHECKPOINT_NAMES:
            graph.read.add(node_id)
            _put_scalar(parsed.settings, MODEL.key, graph.literal(inputs.get(CHECKPOINT_NAMES[kind]), VALUE_INPUTS))
            break
        link = inputs.get("model")
    parsed.loras = [lora for lora in reversed(loras) if lora is not None]


def _comfy_lora(graph: _ComfyGraph, inputs: dict, notes: list[str]) -> tuple[str, float] | None:
    name = graph.literal(inputs.get("lora_name"), VALUE_INPUTS)
    weight = graph.literal(inputs.get("strength_model"), VALUE_INPUTS)
    if not isinstance(name, str) or not _is_number(weight):
        notes.append(f"A ComfyUI LoRA loader without a file name and a number strength ({_short(name, 40)!r}, "
                     f"{_short(weight, 20)!r}) was not read.")
        return None
    clip = graph.literal(inputs.get("strength_clip"), VALUE_INPUTS)
    if _is_number(clip) and clip != weight:
        notes.append(f"The LoRA {_short(name, 60)!r} has strength_clip {clip:g} beside strength_model {weight:g}: "
                     "the studio gives a LoRA one weight, so strength_model was read.")
    return name, float(weight)


def _comfy_latent(graph: _ComfyGraph, link: object, parsed: ParsedText) -> None:
    """Where the sampler's latent comes from: an empty latent of a size, or an encoded image (img2img, inpaint)."""
    seen, masked = set(), False
    while (found := graph.follow(link)) and found[0] not in seen:
        node_id, node = found
        seen.add(node_id)
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "SetLatentNoiseMask":  # a mask on an encoded image: inpainting
            graph.read.add(node_id)
            masked = True
        elif kind in IMAGE_ENCODERS:
            graph.read.add(node_id)
            parsed.settings[MODE.key] = "inpaint" if masked else IMAGE_ENCODERS[kind]
            parsed.settings.setdefault(DENOISING_STRENGTH.key, "1")
            parsed.notes.append(f"The graph starts from an image ({kind}): a PNG holds no source image; "
                                "give the tab one.")
            return
        elif kind.startswith("Empty") and "width" in inputs and "height" in inputs:
            graph.read.add(node_id)
            _put_size(parsed.settings, graph.literal(inputs["width"], VALUE_INPUTS),
                      graph.literal(inputs["height"], VALUE_INPUTS))
            batch = graph.literal(inputs.get("batch_size"), VALUE_INPUTS)
            if batch not in (None, 1):
                _put_scalar(parsed.settings, BATCH_SIZE, batch)
            return
        link = inputs.get("samples")


def _is_comfyui_graph(document: Mapping[str, object]) -> bool:
    """Every entry a node ({"class_type", "inputs"}); ComfyUI's API format has nothing else at the top."""
    return bool(document) and all(_is_node(node) for node in document.values())


def _is_node(node: object) -> bool:
    return isinstance(node, dict) and isinstance(node.get("class_type"), str) and isinstance(node.get("inputs"), dict)


def _is_link(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int))


def _node_order(node_id: str) -> tuple[int, str]:
    """ComfyUI's ids are numbers as text ("3", "12"), sometimes with a group prefix ("5:2")."""
    return (int(node_id), "") if node_id.isdigit() else (2**63, node_id)


# InvokeAI: `invokeai_metadata` (3.0 and later, the graph's core_metadata node) and `sd-metadata` (2.x).

INVOKEAI_KEYS = {"positive_prompt", "generation_mode", "cfg_scale", "app_version"}
# InvokeAI's scheduler names (invokeai/backend/stable_diffusion/schedulers/schedulers.py) as A1111's sampler and
# schedule type, where the studio has the sampler; 2.x's samplers ("k_euler_a") follow k-diffusion's names.
INVOKEAI_SCHEDULERS = {
    "euler_a": ("Euler a", None), "euler": ("Euler", None), "euler_k": ("Euler", "Karras"),
    "dpmpp_2m": ("DPM++ 2M", None), "dpmpp_2m_k": ("DPM++ 2M", "Karras"), "ddim": ("DDIM", None),
    "ddpm": ("DDPM", None), "unipc": ("UniPC", None), "unipc_k": ("UniPC", "Karras"), "lcm": ("LCM", None),
    "tcd": ("TCD", None), "k_euler_a": ("Euler a", None), "k_euler": ("Euler", None),
}
INVOKEAI_MODES = {"txt2img": "text", "img2img": "img2img", "inpaint": "inpaint", "outpaint": "inpaint"}
_INVOKEAI_READ = {"positive_prompt", "negative_prompt", "seed", "steps", "cfg_scale", "scheduler", "width",
                  "height", "model", "loras", "generation_mode", "strength"}


def parse_invokeai_metadata(document: Mapping[str, object]) -> ParsedText:
    """InvokeAI 3 to 5's `invokeai_metadata`: one flat object with the prompts, sampling, model and LoRAs."""
    parsed = ParsedText(INVOKEAI)
    parsed.prompt = _text_or_empty(document.get("positive_prompt"))
    parsed.negative_prompt = _text_or_empty(document.get("negative_prompt"))
    settings = parsed.settings
    for key, name in ((STEPS.key, "steps"), (CFG_SCALE.key, "cfg_scale"), (SEED.key, "seed")):
        _put_scalar(settings, key, document.get(name))
    _put_size(settings, document.get("width"), document.get("height"))
    _put_invokeai_scheduler(settings, document.get("scheduler"))
    mode = document.get("generation_mode")
    if isinstance(mode, str):
        # SDXL's modes carry a prefix ("sdxl_img2img"); the studio's modes serve every family.
        settings[MODE.key] = INVOKEAI_MODES.get(mode.removeprefix("sdxl_"), mode)
        if settings[MODE.key] != "text":
            _put_scalar(settings, DENOISING_STRENGTH.key, document.get("strength"))
    model = document.get("model")
    if isinstance(model, dict):
        _put_scalar(settings, MODEL.key, model.get("name", model.get("model_name")))
    parsed.loras = _invokeai_loras(document.get("loras"), parsed.notes)
    for key, value in document.items():
        if key not in _INVOKEAI_READ:
            settings[str(key)] = _described(value)
    return parsed


def parse_invokeai_legacy(document: Mapping[str, object]) -> ParsedText:
    """InvokeAI 2.x's `sd-metadata`: {"model_weights": ..., "image": {"prompt", "seed", "steps", ...}}."""
    parsed = ParsedText(f"{INVOKEAI} 2")
    image = document["image"]
    parsed.prompt = _legacy_prompt(image.get("prompt"), parsed.notes)
    settings = parsed.settings
    for key, name in ((STEPS.key, "steps"), (CFG_SCALE.key, "cfg_scale"), (SEED.key, "seed")):
        _put_scalar(settings, key, image.get(name))
    _put_size(settings, image.get("width"), image.get("height"))
    _put_invokeai_scheduler(settings, image.get("sampler"))
    if image.get("type") == "img2img":
        settings[MODE.key] = "img2img"
        _put_scalar(settings, DENOISING_STRENGTH.key, image.get("strength"))
    _put_scalar(settings, MODEL.key, document.get("model_weights"))
    if "[" in parsed.prompt:
        parsed.notes.append("InvokeAI 2 writes the negative prompt in [brackets] inside the prompt; it stays there.")
    read = {"prompt", "seed", "steps", "cfg_scale", "sampler", "width", "height", "type", "strength"}
    settings.update({f"image {key}": _described(value) for key, value in image.items() if key not in read})
    return parsed


def _legacy_prompt(value: object, notes: list[str]) -> str:
    """A string, or a list of {prompt, weight} (a blend) of which the first is read."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    prompts = [item.get("prompt") for item in value if isinstance(item, dict) and isinstance(item.get("prompt"), str)]
    if len(prompts) > 1:
        notes.append(f"The InvokeAI prompt blends {len(prompts)} weighted prompts; the first was read.")
    return prompts[0] if prompts else ""


def _put_invokeai_scheduler(settings: dict[str, str], name: object) -> None:
    if not isinstance(name, str):
        return
    sampler, schedule = INVOKEAI_SCHEDULERS.get(name, (name, None))
    settings[SAMPLER.key] = sampler
    if schedule:
        settings[SCHEDULE_TYPE] = schedule


def _invokeai_loras(value: object, notes: list[str]) -> list[tuple[str, float]]:
    """[{"model": {"name": ...}, "weight": 0.75}] (InvokeAI 4 and 5) or [{"lora": {"model_name": ...}, ...}] (3)."""
    loras = []
    for item in value if isinstance(value, list) else []:
        model = item.get("model", item.get("lora")) if isinstance(item, dict) else None
        name = model.get("name", model.get("model_name")) if isinstance(model, dict) else None
        weight = item.get("weight", 1.0) if isinstance(item, dict) else None
        if isinstance(name, str) and _is_number(weight):
            loras.append((name, float(weight)))
        else:
            notes.append(f"An InvokeAI LoRA entry without a name and a number weight was not read: {_described(item)}.")
    return loras


# Helpers for the JSON layouts


def _json_object(text: str) -> dict | None:
    """`text` as a JSON object, or None when it is none (A1111's layout then)."""
    if not text.lstrip()[:1] == "{":
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser follows
        return None
    return document if isinstance(document, dict) else None


def _put_scalar(settings: dict[str, str], key: str, value: object) -> None:
    """A JSON literal as A1111-style text; a list or object is no setting's value and is described instead."""
    if value is not None:
        settings[key] = _described(value)


def _put_size(settings: dict[str, str], width: object, height: object) -> None:
    if width is not None or height is not None:
        settings[SIZE.key] = SIZE.written({"width": _described(width), "height": _described(height)})


def _described(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (str, int, float)):
        return str(value) if not isinstance(value, float) else f"{value:g}" if value.is_integer() else repr(value)
    if isinstance(value, (list, dict)):
        return f"(a {'list' if isinstance(value, list) else 'mapping'} of {len(value)})"
    return "(none)"


def _text_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _is_number(value: object) -> bool:
    """A JSON number usable as a float: JSON's integers may have hundreds of digits, past any float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: object, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
