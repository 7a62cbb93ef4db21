"""scripts/gpu_check.py is meant for a CUDA device this project's machines do not have: its --tiny run walks the same
families, modes and sections on tiny models on the CPU (compiling with dynamo's eager backend, offloading with
diffusers' hooks onto the CPU), so the script is known to run to the end before anyone spends GPU time on it."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pipelines.modes import MODES
from pipelines.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.py"
FAMILIES = ("sd15", "sdxl")
SECTIONS = ("served with previews", "LoRAs", "VAE tiling", "compile", "offload")


def run(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=environment, cwd=PROJECT_ROOT)


def by_family(out: str) -> dict[str, str]:
    """Each family's part of the output, from its '== <family> on' header to the next."""
    parts = re.split(r"^== (\w+) on ", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def tiny_run() -> str:
    done = run("--tiny")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_tiny_run_walks_both_families(tiny_run):
    assert tuple(by_family(tiny_run)) == FAMILIES, tiny_run
    assert "skipped" not in tiny_run, tiny_run


@pytest.mark.parametrize("family", FAMILIES)
def test_every_mode_is_timed_against_its_bare_pipeline(tiny_run, family):
    out = by_family(tiny_run)[family]
    assert set(MODES) == {"text", "pose", "edge", "depth", "img2img", "inpaint"}
    for mode in MODES:
        # A rate, not nan: img2img and inpaint run as many denoising steps as the other modes.
        line = rf"^ *{mode}: studio +\d+\.\d+ it/s \(.*\), bare diffusers +\d+\.\d+ it/s .* the bare rate"
        assert re.search(line, out, re.MULTILINE), (mode, out)
    assert "one copy of the base weights: True" in out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_section_runs_and_says_what_it_measured(tiny_run, family):
    out = by_family(tiny_run)[family]
    for section in SECTIONS:
        assert f"-- {section}\n" in out, (section, out)
    previews = re.search(r"^served with previews: \d+\.\d+ it/s \([\d.]+ s a call, (\d+) previews", out, re.MULTILINE)
    assert previews and int(previews[1]) >= 1 and "for Studio.generate without previews" in out, out
    assert out.count("pixel-identical: yes") == 1 and "pixel-identical after unfusing: yes" in out, out
    assert "decoded in tiles: yes" in out, out
    assert "eager studio freed before the next opens: yes" in out, out
    compiled = re.search(r"compiled UNet: first call [\d.]+ s \(compiling (\d+) graphs\)", out)
    assert compiled and int(compiled[1]) > 0, out
    assert "recompiled: no (0 new graphs over 4 switches)" in out, out
    assert re.search(r"^offload: \d+\.\d+ it/s .* offload hooks on the UNet: yes", out, re.MULTILINE), out


def test_no_nan_check_failed(tiny_run):
    assert "NaN check failed" not in tiny_run and "void" not in tiny_run, tiny_run
    assert re.search(r"^NaN checks: [1-9]\d* images, 0 failed", tiny_run, re.MULTILINE), tiny_run


def test_a_nan_image_fails_the_check_and_voids_a_comparison(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    check = gpu_check.Check(argparse.Namespace(tiny=True, steps=None, repeats=None, budget_s=1.0, ray=False))
    shutil.rmtree(check.scratch)
    with np.errstate(invalid="ignore"):  # NaN cast to uint8, as diffusers' postprocess does it
        nan = VaeImageProcessor().postprocess(torch.full((1, 3, 8, 8), float("nan")), output_type="pil")[0]
    picture = Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))
    assert check.sound(picture, "a picture") and check.identical(picture, picture.copy(), "pictures") == "yes"
    assert check.identical(nan, nan.copy(), "two NaN images").startswith("void")
    assert check.nan_failures == ["two NaN images", "two NaN images"]


def test_without_cuda_or_tiny_it_says_what_it_needs():
    done = run("--families", "sd15")
    assert done.returncode != 0 and "No CUDA device" in done.stderr
