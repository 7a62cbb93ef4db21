"""Print every score and speed figure of the committed embedded model (issue 3's floors beside each).

    HF_HUB_OFFLINE=1 python scripts/evaluate_embedded.py [--models models] [--count 24] [--validation]
    HF_HUB_OFFLINE=1 python scripts/evaluate_embedded.py --editing [--edit-count 24]    # img2img and inpainting only
    HF_HUB_OFFLINE=1 python scripts/evaluate_embedded.py --strength-sweep 0.3 0.4 0.5   # on validation scenes
    HF_HUB_OFFLINE=1 python scripts/evaluate_embedded.py --two-controls [--two-count 12]  # edge + depth at once

Serves models/ with the studio and scores the images its `generate` makes, the ones a person gets, for
prompts, control maps and seeds that training never used. `--validation` scores text and LoRAs on
other unseen prompts instead, the ones to choose settings on, so the evaluation's prompts stay unseen.
img2img and inpainting are scored on unseen start pictures with prompts naming a new colour for the object; each
measure is printed on the world's own pictures first ("truth"), where it must read as expected.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import torch

from embedded import evaluation, world
from pipelines.studio import Studio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=evaluation.MODELS)
    parser.add_argument("--count", type=int, default=24, help="text prompts per guidance scale")
    parser.add_argument("--control-count", type=int, default=12, help="control maps per mode")
    parser.add_argument("--guidance", type=float, nargs="*", default=[], help="extra guidance scales to score")
    parser.add_argument("--validation", action="store_true", help="score the validation prompts (text, LoRAs)")
    parser.add_argument("--steps", type=int, nargs="*", default=[], help="score text at these step counts instead")
    parser.add_argument("--editing", action="store_true", help="score img2img and inpainting only")
    parser.add_argument("--edit-count", type=int, default=24, help="start pictures per img2img/inpainting score")
    parser.add_argument("--strength-sweep", type=float, nargs="*", default=[],
                        help="img2img keeping scores at these strengths on the validation scenes, instead")
    parser.add_argument("--two-controls", action="store_true",
                        help="score an edge map and a depth map of two objects at once only (also under --editing)")
    parser.add_argument("--two-count", type=int, default=12, help="pairs of maps for --two-controls")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EMBEDDED_THREADS", "2")))
    studio = evaluation.load(args.models)
    default = evaluation.default_guidance(studio)
    print(f"model: {args.models / 'embedded'} (default guidance {default}, {evaluation.STEPS} steps, "
          f"{world.RESOLUTION}x{world.RESOLUTION})")
    scenes = evaluation.validation_prompts(2 * args.count) if args.validation else evaluation.text_prompts(args.count)
    if args.steps:
        print_step_scores(studio, args.steps, scenes)
        return
    if args.strength_sweep:
        print_strength_sweep(studio, args.strength_sweep, args.edit_count)
        return
    if args.two_controls:
        print_two_controls_scores(studio, args.two_count)
        return
    if args.editing:
        print_editing_scores(studio, args.edit_count)
        print_two_controls_scores(studio, args.two_count)
        return
    text = print_text_scores(studio, sorted({default, 1.0, 7.5, *args.guidance}), scenes)
    print(f"guidance 7.5 beats 1.0 on colour: {evaluation.colour_beats(text[7.5], text[1.0])}")
    if args.validation:
        print_lora_scores(studio, scenes[::3])  # every third prompt: all three shapes, unlike the evaluation's 8
        return
    negative = evaluation.negative_prompt_scores(studio)
    print(f"negative prompt naming the object's colour: that colour's share {negative['share_without']:.1%} -> "
          f"{negative['share_with']:.1%}")
    for mode in ("edge", "depth"):
        scores = evaluation.control_scores(studio, mode, args.control_count)
        print(f"{mode:<5} IoU mean {scores['iou']:.3f} (floor 0.7), min {scores['min_iou']:.3f}, n={scores['count']}")
    pose = evaluation.control_scores(studio, "pose", args.control_count)
    print(f"pose  limbs covered {pose['limb_coverage']:.0%} (floor 70%), n={pose['count']}")
    print_lora_scores(studio)
    print_editing_scores(studio, args.edit_count)
    print_two_controls_scores(studio, args.two_count)
    text_seconds = evaluation.seconds_for_20_steps(studio)
    print(f"speed text mode: {text_seconds:.2f} s for 20 steps (limit 1 s)")
    control_seconds = evaluation.seconds_for_20_steps(studio, mode="edge")
    print(f"speed with a ControlNet: {control_seconds:.2f} s for 20 steps (limit 1.5 s)")


def print_text_scores(studio: Studio, guidance_scales: list[float], scenes: list[world.Scene]) -> dict[float, dict]:
    truth = evaluation.ground_truth_text_scores(scenes)
    print(f"text  ground truth:    colour {truth['colour']:.0%} (mean error {truth['colour_error']:.1f} RGB), "
          f"shape {truth['shape']:.0%}, n={truth['count']}")
    text = {}
    for guidance in guidance_scales:
        scores = text[guidance] = evaluation.text_scores(studio, guidance, scenes)
        print(f"text  guidance {guidance:>4}: colour {scores['colour']:.0%} (floor 90%, mean error "
              f"{scores['colour_error']:.1f} RGB), shape {scores['shape']:.0%} (floor 80%), held-out pairs colour "
              f"{scores['held_out_colour']:.0%}, n={scores['count']}")
    return text


def print_step_scores(studio: Studio, step_counts: list[int], scenes: list[world.Scene]) -> None:
    """Text scores at the default guidance for each step count (how few steps the model's quality survives)."""
    for steps in step_counts:
        requests = [replace(evaluation.request(scene), steps=steps) for scene in scenes]
        scores = evaluation.score_text_images(evaluation.generate(studio, requests), scenes)
        print(f"text  {steps:>3} steps: colour {scores['colour']:.0%} (mean error {scores['colour_error']:.1f} RGB), "
              f"shape {scores['shape']:.0%}, n={scores['count']}")


def print_lora_scores(studio: Studio, scenes: list[world.Scene] | None = None) -> None:
    for style in world.STYLES:
        scores = evaluation.lora_scores(studio, style, scenes)
        ratio = scores["weight_1"] / scores["without"]
        print(f"lora {style} ({world.STYLES[style]}): {scores['measure']} {scores['without']:.3f} -> "
              f"{scores['weight_1']:.3f} at weight 1 ({ratio:.2f}x); weight 0 identical to base: "
              f"{scores['weight_0_identical']}, n={scores['count']}")


def print_editing_scores(studio: Studio, count: int) -> None:
    """img2img at strength 0, 1 and the middle strength, then inpainting, each measure on the truth first."""
    edits = evaluation.edit_scenes(count)
    truth = evaluation.ground_truth_round_trip_scores(edits)
    trip = evaluation.round_trip_scores(studio, edits)
    print(f"img2img strength 0 truth: a picture to itself {truth['to_itself']:.1f}, to another scene "
          f"{truth['to_another_scene']:.1f} (mean |difference|, 0..255)")
    print(f"img2img strength 0: to the VAE round trip {trip['to_round_trip']:.2f} (identical: "
          f"{trip['identical_to_round_trip']}; floor 0), to the input {trip['to_input']:.2f} (the round trip's own "
          f"error), n={trip['count']}")
    truth = evaluation.ground_truth_prompted_colour_scores(edits)
    print(f"img2img strength 1 truth: prompted colour named right on the world's picture of the prompt "
          f"{truth['prompted']['colour']:.0%}, on the start picture {truth['start']['colour']:.0%}")
    ones = evaluation.prompted_colour_scores(studio, edits)
    image, text = ones["img2img"], ones["text"]
    print(f"img2img strength 1: colour {image['colour']:.0%} (floor: text mode's, {text['colour']:.0%} on the same "
          f"prompts and seeds; mean error {image['colour_error']:.1f} vs {text['colour_error']:.1f} RGB), shape "
          f"{image['shape']:.0%} vs {text['shape']:.0%}, n={image['count']}")
    truth = evaluation.ground_truth_keeping_scores(edits)
    print(f"img2img keeping truth: IoU with the start's object: the prompted scene {truth['prompted']['iou']:.3f}, the "
          f"start {truth['start']['iou']:.3f}, another scene {truth['another_scene']['iou']:.3f}")
    keep = evaluation.keeping_scores(studio, edits)
    new, same, free = keep["new_colour"], keep["same_caption"], ones["img2img_keeping"]
    print(f"img2img strength {keep['strength']}: IoU with the start's object {same['iou']:.3f} with its own caption "
          f"(floor 0.7), {new['iou']:.3f} prompted with a new colour (strength 1: {free['iou']:.3f}); new colour "
          f"taken {new['prompted_colour']:.0%} (floor 80%), start colour kept {new['start_colour']:.0%}, "
          f"n={new['count']}")
    edits = evaluation.edit_scenes(count, evaluation.INPAINT_SEED_OFFSET)
    for start, what in (("object", "recolour the object"), ("background", "an object on the plain background")):
        truth = evaluation.ground_truth_inpaint_scores(studio, edits, start)
        pasted, trip, untouched = truth["pasted"], truth["round_trip"], truth["start"]
        print(f"inpaint truth ({what}): the prompt's picture pasted through the mask: {pasted['changed_outside']} "
              f"pixels changed outside, colour {pasted['colour']:.0%}; not pasted (VAE round trip): "
              f"{trip['changed_outside']} changed outside; the start: colour {untouched['colour']:.0%}")
        for content in ("original", "noise"):
            scores = evaluation.inpaint_scores(studio, edits, content, start)
            strength = scores["strength"] if content == "original" else 1.0
            print(f"inpaint {what}, masked content {content} (strength {strength}, mask blur {scores['mask_blur']}): "
                  f"{scores['changed_outside']} of {scores['outside_pixels']} pixels outside the mask changed "
                  f"(floor 0); inside colour {scores['colour']:.0%} (text mode's floor 90%, mean error "
                  f"{scores['colour_error']:.1f} RGB), shape {scores['shape']:.0%}, n={scores['count']}")


def print_two_controls_scores(studio: Studio, count: int) -> None:
    """An edge map of one object and a depth map of another, apart: each object's IoU within its own half of the
    picture, on the truth first, then with both ControlNets and with each alone (same prompt and seed)."""
    pairs = evaluation.two_control_pairs(count)
    present = evaluation.TWO_CONTROLS_PRESENT
    for name, scores in evaluation.ground_truth_two_controls_scores(pairs).items():
        print(f"two controls truth ({name}): IoU edge object {scores['edge_iou']:.3f}, depth object "
              f"{scores['depth_iou']:.3f}; both drawn (IoU >= {present}) {scores['both']:.0%}")
    made = evaluation.two_controls_scores(studio, pairs)
    for units, scores in made.items():
        what = "edge + depth ControlNets" if units == "both" else f"{units} ControlNet alone"
        print(f"two controls, {what}: IoU edge object {scores['edge_iou']:.3f} (min {scores['min_edge_iou']:.3f}, "
              f"drawn {scores['edge_present']:.0%}), depth object {scores['depth_iou']:.3f} (min "
              f"{scores['min_depth_iou']:.3f}, drawn {scores['depth_present']:.0%}); both drawn {scores['both']:.0%}, "
              f"n={scores['count']}")
    # Measured, not floors (tests/test_embedded_two_controls.py holds those): the model saw one object per scene.
    print(f"two controls, limitations: both objects drawn in {made['both']['both']:.0%} of pairs; the second unit "
          f"takes the edge object's IoU from {made['edge']['edge_iou']:.3f} (alone) to {made['both']['edge_iou']:.3f}")


def print_strength_sweep(studio: Studio, strengths: list[float], count: int) -> None:
    edits = evaluation.edit_scenes(count, evaluation.EDIT_VALIDATION_SEED_OFFSET)
    for strength, keep in evaluation.strength_sweep(studio, strengths, edits).items():
        new, same = keep["new_colour"], keep["same_caption"]
        print(f"img2img strength {strength} (validation): IoU with the start's object {same['iou']:.3f} with its own "
              f"caption, {new['iou']:.3f} with a new colour; new colour taken {new['prompted_colour']:.0%}, "
              f"n={new['count']}")


if __name__ == "__main__":
    main()
