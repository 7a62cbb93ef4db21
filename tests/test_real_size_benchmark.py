"""scripts/benchmark_real_size.py takes many minutes at real size; its --tiny run goes through every measurement on
the tests' tiny model, so the script is known to run. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.settings import PROJECT_ROOT


def test_the_tiny_run_prints_every_ratio_and_the_studio_makes_the_bare_pixels():
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "benchmark_real_size.py"), "--tiny"],
                          capture_output=True, text=True, timeout=300, env=environment, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("same pixels: yes") == 4  # text and the three control modes
    for line in ("mode switch (built modes)", "resident memory with every mode built", "LoRA (rank 32, kohya)",
                 "two active LoRAs", "fused LoRA set"):
        assert line in out, out
    assert "every mode shares the base UNet and VAE: yes" in out
    assert "LoRAs off pixel-identical: yes" in out and "unfusing pixel-identical: yes" in out
