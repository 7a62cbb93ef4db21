"""A generation request, its result, the events of its run and the served facts as JSON, so they can cross HTTP to a
Ray Serve backend.

JSON only: never pickle over HTTP (unpickling runs whatever code the sender chose). An input image that is a file
travels as the file's own bytes (base64) under its file name, so the backend opens it with the same code and the same
checks as in-process (the size before the pixels, EXIF orientation, messages that name the file); a PIL image travels
as a PNG. Result images travel as PNGs with their text chunks, so each keeps its A1111 `parameters`.

A run streams events, one JSON object per line: its progress, the pictures its step hook makes where the model is
(previews, the timeline's frames), then its result or an error. A step hook crosses as its kind and options
(`STEP_HOOKS`): the backend builds the same hook, and the page hands each picture to its own hook's `send`.

A LoRA set's id (`lora_set_id`) names the set, its weights and block weights canonically: the ingress routes by it
(Ray Serve's multiplexed model id) and the generator loads the set it names, both through this one function.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from PIL import Image

from pipelines.errors import StudioError
from pipelines.explore.timeline import FrameKeeper, TimelineFrame
from pipelines.loader import ModelInfo
from pipelines.lora.runs import TrainingPoint
from pipelines.lora.sources import LoraEntry
from pipelines.metadata import save_png
from pipelines.parameters import PARAMETERS, Served
from pipelines.preprocessors.weights import DetectorSources
from pipelines.previews import Preview, Previewer
from pipelines.request import ControlUnit, GenerationRequest, GenerationResult, LoraChoice
from pipelines.validation import clean, field_name

# The answer to a request whose replica died under it; the client sends it once more, for another replica.
REPLICA_LOST_STATUS = 502
NOT_A_REQUEST = "A request must be a JSON object whose keys are GenerationRequest fields."
REQUEST_FIELDS = tuple(item.name for item in fields(GenerationRequest))
# Fields that carry pictures: sent whole with a request, left out of the request a result sends back (the caller has
# them already).
PICTURE_FIELDS = tuple(name for name in REQUEST_FIELDS if name in PARAMETERS and PARAMETERS[name].kind in
                       ("image", "units"))


# ------------------------------------------------------------------ LoRA sets


def lora_set_id(loras: object) -> str:
    """The canonical id of a request's LoRA set: its LoRAs sorted by name with their weights, "" for none.

    `loras` is what a request carries ('name:weight, ...' text or LoRA choices); it is checked here, so a bad value is
    refused naming the field, and a LoRA named twice counts once with its weights added, as the studio runs it.
    """
    choices = clean(PARAMETERS["loras"], loras, [])
    if not choices:
        return ""
    return json.dumps(sorted([choice.name, choice.weight, choice.blocks] for choice in choices), separators=(",", ":"))


def lora_set_names(set_id: str) -> list[str]:
    """The LoRA names in a set's id (`lora_set_id`)."""
    return [name for name, *_strength in json.loads(set_id)] if set_id else []


def wire_lora_set_id(wire: object) -> str:
    """`lora_set_id` of a request on the wire."""
    if not isinstance(wire, Mapping):
        raise StudioError(NOT_A_REQUEST)
    return lora_set_id(_loras_from_wire(wire.get("loras")))


# ------------------------------------------------------------------ requests


def request_to_wire(request: GenerationRequest, *, pictures: bool = True) -> dict[str, object]:
    """`request` (checked or as sent) as JSON-able values; without its picture fields unless `pictures`."""
    names = REQUEST_FIELDS if pictures else tuple(name for name in REQUEST_FIELDS if name not in PICTURE_FIELDS)
    return {name: _value_to_wire(name, getattr(request, name)) for name in names}


def request_from_wire(wire: object, folder: Path) -> GenerationRequest:
    """The request `wire` describes; its image files are written into `folder`, which must outlive the request's
    run. Each value is checked later, by the endpoint's rules, as for a request made in-process."""
    return GenerationRequest(**_fields_from_wire(wire, folder))


def _value_to_wire(name: str, value: object) -> object:
    if name == "loras":
        return _loras_to_wire(value)
    if name == "control_units":
        return [_unit_to_wire(unit) for unit in value] if isinstance(value, (list, tuple)) else value
    if name in PICTURE_FIELDS:
        return _image_to_wire(value, name)
    return list(value) if isinstance(value, tuple) else value


def _fields_from_wire(wire: object, folder: Path | None) -> dict[str, object]:
    if not isinstance(wire, Mapping):
        raise StudioError(NOT_A_REQUEST)
    unknown = sorted(str(key) for key in wire if key not in REQUEST_FIELDS)
    if unknown:
        raise StudioError(f"The request has fields the studio does not know: {', '.join(unknown)}.")
    values = dict(wire)
    if "loras" in values:
        values["loras"] = _loras_from_wire(values["loras"])
    for name in set(PICTURE_FIELDS) & set(values):
        if folder is None:
            raise ValueError(f"{name} carries a picture, and no folder was given to write it in")
        values[name] = _pictures_from_wire(name, values[name], folder)
    return values


def _loras_to_wire(loras: object) -> object:
    if isinstance(loras, (list, tuple)) and all(isinstance(choice, LoraChoice) for choice in loras):
        return [{"name": choice.name, "weight": choice.weight, "blocks": choice.blocks} for choice in loras]
    return loras  # 'name:weight, ...' text, checked where the request runs


def _loras_from_wire(loras: object) -> object:
    if not isinstance(loras, list):
        return loras
    if not all(isinstance(item, Mapping) and set(item) <= {"name", "weight", "blocks"} and "name" in item
               for item in loras):
        raise StudioError(f"{field_name(PARAMETERS['loras'])}: each LoRA must be an object like "
                          '{"name": "stripes", "weight": 0.8, "blocks": "out"} (blocks may be left out).')
    return tuple(LoraChoice(item["name"], item.get("weight", 1.0), item.get("blocks", "")) for item in loras)


def _unit_to_wire(unit: object) -> object:
    if isinstance(unit, ControlUnit):
        unit = {item.name: getattr(unit, item.name) for item in fields(ControlUnit)}
    if not isinstance(unit, Mapping):
        return unit  # refused where the request is checked, with the field's name
    image = unit.get("image")
    if isinstance(image, Mapping):  # a file as Gradio hands it over
        image = image.get("path")
    return {**unit, "image": _image_to_wire(image, "control_units")}


def _pictures_from_wire(name: str, value: object, folder: Path) -> object:
    if name != "control_units":
        return _image_from_wire(value, name, folder)
    if not isinstance(value, list):
        return value
    return [{**unit, "image": _image_from_wire(unit.get("image"), name, folder)} if isinstance(unit, Mapping) else unit
            for unit in value]


def _image_to_wire(image: object, name: str) -> object:
    if image is None or (isinstance(image, str) and not image.strip()):
        return None
    if isinstance(image, Image.Image):
        return {"name": f"{name}.png", "data": png_to_wire(image)}
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise StudioError(f"{field_name(PARAMETERS[name])}: the file {path.name!r} does not exist.")
        return {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode("ascii")}
    return image  # refused where the request is checked, with the field's name


def _image_from_wire(value: object, name: str, folder: Path) -> object:
    if value is None:
        return None
    if not (isinstance(value, Mapping) and isinstance(value.get("name"), str) and isinstance(value.get("data"), str)):
        raise StudioError(f"{field_name(PARAMETERS[name])} must be sent as an object like "
                          '{"name": "map.png", "data": "<the file, base64>"}.')
    try:
        data = base64.b64decode(value["data"], validate=True)
    except binascii.Error:
        what = field_name(PARAMETERS[name])
        raise StudioError(f"{what}: the data of {value['name'][:60]!r} is not base64.") from None
    # Its own folder keeps the sender's file name (the messages name it) without two files meeting.
    target = folder / str(len(list(folder.iterdir()))) / _file_name(value["name"])
    target.parent.mkdir()
    target.write_bytes(data)
    return str(target)


def _file_name(sent: str) -> str:
    """The last part of the sender's file name, fit to write (never a folder, NUL or overlong name)."""
    name = Path(sent.replace("\x00", "")).name[-100:]
    return name if name not in ("", ".", "..") else "image"


# ------------------------------------------------------------------ results


def png_to_wire(image: Image.Image) -> str:
    """`image` as base64 PNG, with its text entries (its `parameters`) as text chunks."""
    buffer = io.BytesIO()
    save_png(image, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_from_wire(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def result_to_wire(result: GenerationResult) -> dict[str, object]:
    """`result` as JSON-able values; its request without the pictures, which the caller sent."""
    return {
        "images": [png_to_wire(image) for image in result.images],
        "seeds": list(result.seeds),
        "parameters": list(result.parameters),
        "request": request_to_wire(result.request, pictures=False),
        "control_map": None if result.control_map is None else png_to_wire(result.control_map),
        "notes": list(result.notes),
    }


def result_from_wire(wire: Mapping[str, object], sent: GenerationRequest) -> GenerationResult:
    """The result `wire` describes, for the request `sent`: its request as run, with the pictures `sent` carried."""
    control_map = wire["control_map"]
    return GenerationResult(
        images=[png_from_wire(data) for data in wire["images"]],
        seeds=list(wire["seeds"]),
        parameters=list(wire["parameters"]),
        request=replace(sent, **_fields_from_wire(wire["request"], folder=None)),
        control_map=None if control_map is None else png_from_wire(control_map),
        notes=list(wire["notes"]),
    )


# ------------------------------------------------------------------ a run: the call and its events

# The step hooks a backend can run for the page, by the name they cross under; each has `options()` and `send`.
STEP_HOOKS: dict[str, type] = {"previews": Previewer, "frames": FrameKeeper}
NOT_REMOTE = ("This part of the studio watches every step of a run on the page's own machine, and this page runs "
              "generation on a Ray Serve backend; it is not served remotely.")


def call_to_wire(request: GenerationRequest, seeds: list[int] | None, hook: object, progress: bool = False) -> dict:
    """One `Studio.generate` call: the request, its keyword arguments, its step hook (one of `STEP_HOOKS`), and
    whether to send each step's progress (which a caller that may stop the run needs, to be asked at each step)."""
    return {"request": request_to_wire(request), "seeds": seeds, "hook": hook_to_wire(hook), "progress": progress}


def hook_to_wire(hook: object) -> dict | None:
    if hook is None:
        return None
    kind = next((name for name, kind in STEP_HOOKS.items() if type(hook) is kind), None)
    if kind is None:
        raise StudioError(NOT_REMOTE)
    return {"kind": kind, "options": hook.options()}


def hook_from_wire(wire: object, send) -> object:
    """The step hook `wire` describes, sending what it makes to `send` (as `event_to_wire` writes it)."""
    if wire is None:
        return None
    if not (isinstance(wire, Mapping) and wire.get("kind") in STEP_HOOKS and isinstance(wire.get("options"), Mapping)):
        raise StudioError(f"A step hook must be one of {', '.join(STEP_HOOKS)} with its options.")
    return STEP_HOOKS[wire["kind"]](**wire["options"], send=lambda made: send(event_to_wire(made)))


def progress_event(done: int, total: int) -> dict:
    return {"progress": [done, total]}


def event_to_wire(made: Preview | TimelineFrame) -> dict:
    """A picture a step hook made, as a line of the run's stream."""
    if isinstance(made, Preview):
        return {"preview": {"images": [png_to_wire(image) for image in made.images], "step": made.step,
                            "total": made.total}}
    predicted = None if made.predicted is None else png_to_wire(made.predicted)
    return {"frame": {"step": made.step, "total": made.total, "timestep": made.timestep,
                      "latent": png_to_wire(made.latent), "predicted": predicted}}


def event_from_wire(event: Mapping[str, object]) -> Preview | TimelineFrame:
    if "preview" in event:
        preview = event["preview"]
        return Preview([png_from_wire(data) for data in preview["images"]], preview["step"], preview["total"])
    frame = event["frame"]
    predicted = None if frame["predicted"] is None else png_from_wire(frame["predicted"])
    return TimelineFrame(frame["step"], frame["total"], frame["timestep"], png_from_wire(frame["latent"]), predicted)


# ------------------------------------------------------------------ what is served


def served_to_wire(served: Served) -> dict[str, object]:
    return asdict(served)


def served_from_wire(wire: Mapping[str, object]) -> Served:
    """The limits a backend serves, for checking requests before they are sent."""
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in wire.items()}
    return Served(**{**values, "detectors": DetectorSources(**wire["detectors"])})


@dataclass(frozen=True)
class BackendFacts:
    """What a page shows and checks requests against, as the backend's Studio knows it."""

    served: Served
    model: ModelInfo
    device: str
    notes: tuple[str, ...]
    controlnets: dict[str, str]  # mode -> ControlNet source
    lora_file_bytes: int  # the largest LoRA file the backend reads


def facts_to_wire(studio) -> dict[str, object]:
    """`BackendFacts` of a Studio, as JSON-able values."""
    return {
        "served": served_to_wire(studio.served),
        "model": asdict(studio.model),
        "device": studio.device,
        "notes": list(studio.notes),
        "controlnets": dict(studio.controlnets.registry),
        "lora_file_bytes": studio.loras.max_file_bytes,
    }


def facts_from_wire(wire: Mapping[str, object]) -> BackendFacts:
    return BackendFacts(
        served=served_from_wire(wire["served"]),
        model=ModelInfo(**wire["model"]),
        device=wire["device"],
        notes=tuple(wire["notes"]),
        controlnets=dict(wire["controlnets"]),
        lora_file_bytes=wire["lora_file_bytes"],
    )


def lora_entry_to_wire(entry: LoraEntry) -> dict[str, object]:
    return asdict(entry)


def lora_entry_from_wire(wire: Mapping[str, object]) -> LoraEntry:
    return LoraEntry(**{**wire, "trigger_words": tuple(wire["trigger_words"]), "point": TrainingPoint(**wire["point"])})
