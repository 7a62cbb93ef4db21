"""Print the figures of the embedded model's style reference (IP-Adapter), issue 26's measured truths beside each.

    HF_HUB_OFFLINE=1 python scripts/evaluate_style.py [--count 48] [--control-count 12]
    HF_HUB_OFFLINE=1 python scripts/evaluate_style.py --sweep [--count 24]   # validation pairs: scales, blocks

Scores images of prompts, references, control maps and seeds that training never used, made by the studio on
models/embedded, which loads its adapter from studio.json's "style_adapter". `--sweep` scores other
unseen pairs (the validation ones) at several scales and with each cross-attention block alone: where the default
scale and the block presets were chosen.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from embedded import style_evaluation as se


def show(name: str, scores: dict) -> None:
    figures = ", ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in scores.items())
    print(f"{name}: {figures}", flush=True)


def sweep(studio, count: int, control_count: int) -> None:
    pairs = se.style_pairs(count, se.STYLE_VALIDATION_SEED_OFFSET)
    show("validation, no reference", se.without_reference_scores(studio, pairs))
    for scale in (0.5, 0.75, 1.0, 1.25, 1.5):
        show(f"validation, prompt + reference, scale {scale}", se.prompt_and_reference_scores(studio, pairs, scale))
        show(f"validation, reference alone, scale {scale}", se.reference_alone_scores(studio, pairs, scale))
    control = se.control_pairs(control_count, se.STYLE_VALIDATION_SEED_OFFSET + 20_000)
    for block in se.cross_attention_blocks(studio.base):
        for scale in (1.0, 2.0):
            preset = se.block_only(studio.base, [block], scale)
            show(f"validation, {block} alone at {scale}, prompt + reference",
                 se.prompt_and_reference_scores(studio, pairs, 1.0, preset))
            show(f"validation, {block} alone at {scale}, edge map",
                 se.control_style_scores(studio, "edge", control, preset, 1.0))
    show("validation, every block, edge map", se.control_style_scores(studio, "edge", control, "everything", 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="prompt/reference pairs")
    parser.add_argument("--control-count", type=int, default=12, help="control maps per mode")
    parser.add_argument("--sweep", action="store_true", help="scales and blocks on the validation pairs instead")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EMBEDDED_THREADS", "1")))
    started = time.time()
    studio = se.load_studio()
    entry = se.studio_json()["style_adapter"]
    print(f"adapter: {entry['subfolder']}/{entry['weight_name']}, default scale {entry['default_scale']}, "
          f"{se.STEPS} steps, guidance {se.GUIDANCE}, DDIM", flush=True)
    if args.sweep:
        sweep(studio, args.count, args.control_count)
        print(f"{(time.time() - started) / 60:.1f} min")
        return
    pairs = se.style_pairs(args.count)
    show("(a) no reference, and scale 0, against a studio without the adapter: pixels identical (truth: 1.00)",
         se.identical_without_reference(studio, se.load_studio(), pairs[:8]))
    show("no reference: 'a <shape>' alone", se.without_reference_scores(studio, pairs))
    show("(b) 'a <shape>' + reference of another shape (truth: all >= 0.80)",
         se.prompt_and_reference_scores(studio, pairs))
    show("(c) reference alone, empty prompt (truth: both_colours >= 0.85)", se.reference_alone_scores(studio, pairs))
    control_pairs = se.control_pairs(args.control_count)
    for mode in ("edge", "depth"):
        for name in ("style", "style and layout", "everything"):
            show(f"(d) {mode} map, '{name}' (truth for style: iou_drop <= 0.05, colours taken)",
                 se.control_style_scores(studio, mode, control_pairs, name))
    print(f"{(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
