"""scripts/gpu_check.py is meant for a CUDA device this project's machines do not have: its --tiny run executes the
same sections on tiny models on the CPU (compiling with dynamo's eager backend), so the script is known to run."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=environment, cwd=PROJECT_ROOT)


def test_the_tiny_run_goes_through_every_section_and_a_lora_switch_does_not_recompile():
    done = run("--tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for line in (" text: studio", " edge: studio", "LoRA: first load", "fused LoRA set", "VAE at", "compiled UNet"):
        assert line in out, out
    assert out.count("pixel-identical: yes") == 1 and "pixel-identical after unfusing: yes" in out
    assert "recompiled: no (0 new graphs over 3 switches)" in out and "compiling 0 graphs" not in out


def test_without_cuda_or_tiny_it_says_what_it_needs():
    done = run("--families", "sd15")
    assert done.returncode != 0 and "No CUDA device" in done.stderr
