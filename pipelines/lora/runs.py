"""Checkpoints of one training run, in the order they were trained.

Trainers save a LoRA every few epochs or steps and compare the checkpoints side by side. Where a file stands in its
run comes from what it says about itself, kohya's `ss_epoch` and `ss_steps`, or else from its name as trainers
write it: kohya's `<output>-000004.safetensors` (epoch 4) and `<output>-step00000500.safetensors` (step 500),
diffusers' training scripts' `<output>/checkpoint-500/pytorch_lora_weights.safetensors` (step 500). Its run is
kohya's `ss_session_id` when written, else the name without that suffix (the output folder, for diffusers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

# Anchored, no nested quantifiers: linear on any name.
_KOHYA_EPOCH = re.compile(r"(?P<run>.+)-(?P<epoch>\d{6})")
_KOHYA_STEP = re.compile(r"(?P<run>.+)-step(?P<step>\d{8})")
_DIFFUSERS_STEP = re.compile(r"checkpoint-(?P<step>\d+)")


@dataclass(frozen=True)
class TrainingPoint:
    """A checkpoint's run and its place in it (None where the file does not say)."""

    run: str
    epoch: int | None = None
    step: int | None = None
    output: str = ""  # the run's name as its files show it ("ink" for ink-000004.safetensors); `run` where empty

    @property
    def shown(self) -> str:
        """The checkpoint as a grid row names it: "ink (epoch 4)", "out (step 500)"; "" for other files."""
        return f"{self.output or self.run} ({self.label})" if self.label else ""

    @property
    def label(self) -> str:
        """"epoch 4", "step 500", or "" for a file that is not a known checkpoint."""
        if self.epoch is not None:
            return f"epoch {self.epoch}"
        return f"step {self.step}" if self.step is not None else ""


def training_point(name: str, metadata: Mapping[str, str]) -> TrainingPoint:
    """Where the LoRA `name` (a path relative to its folder, or a file name) stands in its training run."""
    path = PurePosixPath(name.replace("\\", "/"))
    run, epoch, step = str(path.with_suffix("")), None, None
    if found := _KOHYA_EPOCH.fullmatch(path.stem):
        run, epoch = found["run"], int(found["epoch"])
    elif found := _KOHYA_STEP.fullmatch(path.stem):
        run, step = found["run"], int(found["step"])
    elif len(path.parts) > 1 and (found := _DIFFUSERS_STEP.fullmatch(path.parent.name)):
        run, step = str(path.parent.parent), int(found["step"])
    epoch = _whole(metadata.get("ss_epoch"), epoch)
    step = _whole(metadata.get("ss_steps"), step)
    return TrainingPoint(metadata.get("ss_session_id") or run, epoch, step, output=run)


def in_training_order(names: Sequence[str], points: Mapping[str, TrainingPoint]) -> list[str]:
    """`names` with each run's checkpoints together, by epoch then step, in the order each run first appears;
    files that are not checkpoints keep their place."""
    first_seen = {}
    for index, name in enumerate(names):
        first_seen.setdefault(points[name].run, index)

    def place(item: tuple[int, str]) -> tuple:
        index, name = item
        point = points[name]
        known = point.epoch is not None or point.step is not None
        return first_seen[point.run], not known, point.epoch or 0, point.step or 0, index

    return [name for _, name in sorted(enumerate(names), key=place)]


def _whole(text: str | None, otherwise: int | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else otherwise
