"""Block weights (`name:weight@blocks`): the syntax and its refusals, each model's blocks, the scales the manager
sets through diffusers (adapters, the compiled UNet's slot, fused), PNG parameters both ways, grid rows and X/Y
values, and on the embedded model which blocks carry its `stripes` style."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from embedded import evaluation
from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora
from pipelines.block_weights import PRESETS, SD_17_BLOCKS, diffusers_scales, multipliers, unet_blocks
from pipelines.endpoints import AXES, XY_PLOT, validate_grid, validate_xy
from pipelines.errors import StudioError
from pipelines.grid import grid_rows, render_grid
from pipelines.lora import LoraManager
from pipelines.metadata import format_parameters, parse_parameters
from pipelines.parameters import PARAMETERS, bind
from pipelines.png_info import settings_from_parameters
from pipelines.request import GenerationRequest, GridRequest, LoraChoice, LoraWeight, XYRequest
from pipelines.settings import EMBEDDED_LORAS, EMBEDDED_MODEL, Settings
from pipelines.validation import clean

CONFIGS = Path(__file__).resolve().parents[1] / "embedded" / "real_size_configs"
STEPS = 2
LORAS = PARAMETERS["loras"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_sd_dir) -> Path:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    folder = tmp_path_factory.mktemp("block_loras")
    write_lora(folder / "ink.safetensors", lora_tensors(pipe, layout="kohya", seed=1), kohya_metadata(title="ink"))
    write_lora(folder / "unet-only.safetensors", lora_tensors(pipe, layout="peft", seed=2, text_encoder=False))
    time = pipe.unet.time_embedding.linear_1  # a layer whose name diffusers' per-block scales cannot read
    write_lora(folder / "timed.safetensors", lora_tensors(pipe, layout="peft", seed=3, text_encoder=False) | {
        "unet.time_embedding.linear_1.lora_A.weight": torch.zeros(4, time.in_features),
        "unet.time_embedding.linear_1.lora_B.weight": torch.zeros(time.out_features, 4),
    })
    return folder


@pytest.fixture(scope="module")
def studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir):
    from pipelines.studio import Studio

    return Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(lora_dir), device="cpu",
                           controlnets=tiny_controlnet_dirs))


def pixels(studio, *loras: LoraChoice) -> np.ndarray:
    request = GenerationRequest(prompt="a red circle", steps=STEPS, seed=7, loras=loras)
    return np.asarray(studio.generate(request).images[0])


def config(family: str) -> dict:
    return json.loads((CONFIGS / family / "unet.json").read_text())


# ------------------------------------------------------------------ syntax


@pytest.mark.parametrize(("text", "expected"), [
    ("stripes:0.8@out", (LoraChoice("stripes", 0.8, "out"),)),
    ("stripes@In+OUT, mono:1", (LoraChoice("stripes", 1.0, "in+out"), LoraChoice("mono", 1.0))),
    ("stripes:1@OUT03=1:down=0:Mid=0.5", (LoraChoice("stripes", 1.0, "in=0:mid=0.5:OUT03=1"),)),
    ("stripes:0.5@outall", (LoraChoice("stripes", 0.5, "OUTALL"),)),
    ("hub:owner/repo:0.5@mid", (LoraChoice("hub:owner/repo", 0.5, "mid"),)),
    ("ink@v2.safetensors:0.7", (LoraChoice("ink@v2.safetensors", 0.7),)),  # an @ in a file name
    ("stripes:0.5@out, stripes:0.25@out", (LoraChoice("stripes", 0.75, "out"),)),
])
def test_the_loras_field_reads_block_weights(text, expected):
    assert clean(LORAS, text, []) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("stripes:1@sideways", "'sideways' is no block preset; the presets are all, in, mid, out, INS"),
    ("stripes:1@in=0:bottom=1", "'bottom' is no block; a vector's keys are in, mid, out"),
    ("stripes:1@in=0:in=1", "the block in is named twice"),
    ("stripes:1@in=3", "the multiplier of in must be from -2 to 2; got 3"),
    ("stripes:1@", "nothing follows @"),
    ("stripes:1@in, stripes:1@out", "named twice with different block weights"),
])
def test_bad_block_weights_are_refused_naming_the_field(text, words):
    with pytest.raises(StudioError, match=r"^LoRAs: .*" + words.replace("(", r"\(")):
        clean(LORAS, text, [])


def test_blocks_the_served_model_lacks_are_refused_with_its_blocks(studio):
    bound = bind(LORAS, studio.served)
    assert studio.served.lora_blocks == ("IN03", "MID", "OUT00", "OUT01")  # the tiny UNet: one level with attention
    with pytest.raises(StudioError, match="LoRAs: .*OUTALL is a LoRA Block Weight preset for SD 1.x/2.x's blocks; "
                                          "this model's are IN03, MID, OUT00, OUT01"):
        clean(bound, "ink@OUTALL", [])
    with pytest.raises(StudioError, match="this model has no block IN04; its blocks are IN03, MID, OUT00, OUT01"):
        clean(bound, "ink@IN04=0", [])
    assert clean(bound, "ink@IN03=0", []) == (LoraChoice("ink", 1.0, "IN03=0"),)
    with pytest.raises(StudioError, match="no block IN04"):  # a caller that skips validation: the manager refuses
        studio.loras.activate([LoraChoice("ink.safetensors", 1.0, "IN04=0")])


# ------------------------------------------------------------------ each model's blocks


def test_sd15_sdxl_and_the_embedded_model_have_their_block_weight_layouts():
    sd15, sdxl = unet_blocks(config("sd15")), unet_blocks(config("sdxl"))
    assert tuple(block.name for block in sd15) == SD_17_BLOCKS  # LoRA Block Weight's 17 blocks without BASE
    assert [block.name for block in sdxl] == ["IN04", "IN05", "IN07", "IN08", "MID", *(f"OUT0{n}" for n in range(6))]
    embedded = unet_blocks(json.loads((EMBEDDED_MODEL / "unet" / "config.json").read_text()))
    assert [block.name for block in embedded] == ["IN03", "IN05", "MID", "OUT00", "OUT01", "OUT02", "OUT03"]
    assert [block.address for block in sd15[:3]] == [
        "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "down_blocks.1.attentions.0"]
    assert sdxl[5].address == "up_blocks.0.attentions.0" and sd15[6].address == "mid_block.attentions.0"


def test_presets_map_onto_diffusers_per_block_scales():
    sd15 = unet_blocks(config("sd15"))
    names = [block.name for block in sd15]
    outd = multipliers("OUTD", names)
    assert [name for name, value in outd.items() if value] == ["OUT03", "OUT04", "OUT05", "OUT06"]
    assert sum(multipliers("INALL", names).values()) == 6 and sum(multipliers("in+out", names).values()) == 15
    scales = diffusers_scales({block: 0.8 * outd[block.name] for block in sd15})
    assert scales == {"down": {"block_0": [0, 0], "block_1": [0, 0], "block_2": [0, 0]}, "mid": 0,
                      "up": {"block_1": [0.8, 0.8, 0.8], "block_2": [0.8, 0, 0], "block_3": [0, 0, 0]}}
    vector = multipliers("out=0.5:OUT03=1", names)  # a block not named keeps 1; a block beats its side
    assert (vector["IN01"], vector["MID"], vector["OUT03"], vector["OUT11"]) == (1, 1, 1, 0.5)
    assert all(preset.what for preset in PRESETS.values())  # the docs' line for each


# ------------------------------------------------------------------ the manager


def test_at_all_is_no_block_weights_pixel_for_pixel(studio):
    plain = pixels(studio, LoraChoice("ink.safetensors", 0.8))
    assert np.array_equal(pixels(studio, LoraChoice("ink.safetensors", 0.8, "all")), plain)
    assert np.array_equal(pixels(studio, LoraChoice("ink.safetensors", 0.8, "in=1:mid=1:out=1")), plain)


def test_every_block_at_zero_is_the_base_unet_and_one_side_is_neither(studio):
    base = pixels(studio)
    full = pixels(studio, LoraChoice("unet-only.safetensors", 1.0))
    assert np.array_equal(pixels(studio, LoraChoice("unet-only.safetensors", 1.0, "in=0:mid=0:out=0")), base)
    out = pixels(studio, LoraChoice("unet-only.safetensors", 1.0, "out"))
    assert np.abs(out.astype(int) - base).mean() > 0.5 and np.abs(out.astype(int) - full).mean() > 0.5
    # Block weights are another set: back to the full LoRA, and the base, exactly.
    assert np.array_equal(pixels(studio, LoraChoice("unet-only.safetensors", 1.0)), full)
    assert np.array_equal(pixels(studio), base)


def test_the_manager_sets_peft_scales_per_block_and_the_text_encoder_at_the_weight(studio):
    manager = studio.loras
    notes = manager.activate([LoraChoice("ink.safetensors", 0.5, "out")])
    adapter = manager.active[0]
    unet, encoder = studio.base.unet, studio.base.text_encoder
    rank_scale = 1.0  # the synthetic LoRA's alpha is its rank
    down = unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    up = unet.get_submodule("up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q")
    mid = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    assert (down.scaling[adapter], mid.scaling[adapter], up.scaling[adapter]) == (0.0, 0.0, 0.5 * rank_scale)
    text = next(module for name, module in encoder.named_modules() if name.endswith("q_proj"))
    assert text.scaling[adapter] == 0.5 * rank_scale
    assert any("text encoder part runs at its weight 0.5" in note for note in notes)
    manager.activate([])


def test_block_weights_run_where_diffusers_cannot_read_a_layers_block_from_its_name(studio):
    """A UNet LoRA layer named by fewer than four parts (time_embedding.linear_1) fails diffusers' per-block scales
    for every adapter, once loaded: the manager sets the same scales layer by layer."""
    ink_out = pixels(studio, LoraChoice("ink.safetensors", 0.8, "out"))  # through diffusers' per-block scales
    notes = studio.loras.activate([LoraChoice("timed.safetensors", 0.5, "out")])
    assert any("run at its weight 0.5, not scaled by block (for example time_embedding.linear_1)" in note
               for note in notes)
    assert studio.base.unet.time_embedding.linear_1.scaling[studio.loras.active[0]] == 0.5
    assert np.array_equal(pixels(studio, LoraChoice("ink.safetensors", 0.8, "out")), ink_out)  # layer by layer


def test_the_compiled_unets_slot_takes_block_weights_as_adapters_do(tiny_sd_dir, lora_dir):
    def latents(pipe):
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=generator, output_type="latent").images

    eager_pipe, slot_pipe = (StableDiffusionPipeline.from_pretrained(tiny_sd_dir) for _ in range(2))
    for pipe in (eager_pipe, slot_pipe):
        pipe.set_progress_bar_config(disable=True)
    eager, slotted = LoraManager(eager_pipe, "sd15", lora_dir), LoraManager(slot_pipe, "sd15", lora_dir, slot_rank=8)
    for choices in ([LoraChoice("ink.safetensors", 0.8, "out")], [LoraChoice("ink.safetensors", 0.8, "IN03=0.5")]):
        eager.activate(choices)
        slotted.activate(choices)
        torch.testing.assert_close(latents(slot_pipe), latents(eager_pipe), rtol=1e-4, atol=1e-5)


def test_a_fused_set_with_block_weights_keeps_them(tiny_sd_dir, lora_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe.set_progress_bar_config(disable=True)
    manager = LoraManager(pipe, "sd15", lora_dir)

    def latents():
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=generator, output_type="latent").images

    out = [LoraChoice("unet-only.safetensors", 1.0, "out")]
    manager.activate(out)
    unfused = latents()
    manager.activate([])
    manager.fuse = True
    manager.activate([LoraChoice("unet-only.safetensors", 1.0)])  # fused at its weight everywhere
    whole = latents()
    manager.activate(out)  # another set: the base back, then fused with its block scales
    assert manager._fused_set is not None
    torch.testing.assert_close(latents(), unfused, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole, unfused, rtol=1e-4, atol=1e-4)  # the block scales make a difference


# ------------------------------------------------------------------ PNG parameters


@pytest.mark.parametrize(("choice", "tag"), [
    (LoraChoice("ink.safetensors", 0.8, "out"), "<lora:ink.safetensors:0.8:lbw=out>"),
    (LoraChoice("ink.safetensors", 1.0, "in=0:mid=1:out=0.5"), "<lora:ink.safetensors:1:in=0:mid=1:out=0.5>"),
])
def test_png_parameters_carry_block_weights_and_png_info_sends_them_back(studio, choice, tag):
    request = GenerationRequest(prompt="a red circle", steps=STEPS, seed=7, loras=(choice,))
    text = studio.generate(request).parameters[0]
    assert text.splitlines()[0] == f"a red circle {tag}"
    values = settings_from_parameters(text, studio.served, studio.loras).values
    assert values["loras"] == f"{choice.name}:{choice.weight:g}@{choice.blocks}"
    assert clean(bind(LORAS, studio.served), values["loras"], []) == (choice,)


def test_png_info_reads_other_tools_block_weights(studio):
    text = format_parameters("x", "", {"Steps": 2}, [("a", 1.0, "")]).replace(
        "<lora:a:1>", "<lora:a:1:in=0:mid=1:out=0> <lora:b:0.5:lbw=OUTALL> <lora:c:1:lbw=1,0,0,0,1>")
    parsed = parse_parameters(text)
    assert parsed["lora_blocks"] == {"a": "in=0:mid=1:out=0", "b": "OUTALL"}  # SD.Next's keys, LBW's preset
    reading = settings_from_parameters(text, studio.served)
    assert reading.values["loras"] == "a:1@in=0:mid=1:out=0, b:0.5, c:1"
    assert any("block weights of the LoRA 'b' (@OUTALL) were not used: OUTALL is a LoRA Block Weight preset"
               in note for note in reading.notes)
    assert any("Only the first weight of <lora:c:1:lbw=1,0,0,0,1>" in note for note in reading.notes)


# ------------------------------------------------------------------ grid rows and X/Y values


def test_grid_rows_take_block_presets_beside_a_weight_range(studio):
    grid = GridRequest(GenerationRequest(prompt="a red circle", steps=STEPS), ("unet-only.safetensors",),
                       "0-1 step 1, 1@out, 1@in", "7")
    checked, _ = validate_grid(grid, studio.served)
    assert checked.weights == (LoraWeight(0.0), LoraWeight(1.0), LoraWeight(1.0, "out"), LoraWeight(1.0, "in"))
    labels = [label for label, _ in grid_rows(checked.lora_names, checked.weights)]
    assert labels == ["no LoRA", "unet-only.safetensors @ 0", "unet-only.safetensors @ 1",
                      "unet-only.safetensors @ 1@out", "unet-only.safetensors @ 1@in"]
    result = render_grid(studio, grid)
    alone = pixels(studio, LoraChoice("unet-only.safetensors", 1.0, "out"))
    row = np.asarray(result.cells[3].image.resize(alone.shape[1::-1]))  # the cells are enlarged, pixel for pixel
    assert np.abs(row.astype(int) - alone).max() <= 1  # fused rows: float rounding only
    assert parse_parameters(result.cells[3].parameters)["lora_blocks"] == {"unet-only.safetensors": "out"}
    with pytest.raises(StudioError, match="Weights: the block weights of '1@OUTS'"):
        validate_grid(replace(grid, weights="1@OUTS"), studio.served)


def test_xy_axes_take_block_weights(studio):
    base = GenerationRequest(prompt="a red circle", loras="ink.safetensors:0.8@mid", steps=STEPS)
    plot, _ = validate_xy(XYRequest(base, "LoRA weight", "1, 1@out", "LoRA", "none, ink.safetensors@in"),
                          replace(studio.served, axes=tuple(AXES)))
    assert [AXES["LoRA weight"].label(value) for value in plot.x_values] == ["weight 1", "weight 1@out"]
    assert [AXES["LoRA"].label(value) for value in plot.y_values] == ["no LoRA", "ink.safetensors @ 1@in"]
    cell = AXES["LoRA weight"].apply(plot.base, plot.x_values[1])
    assert cell.loras == (LoraChoice("ink.safetensors", 1.0, "out"),)
    assert "loras" in XY_PLOT.parameters


# ------------------------------------------------------------------ measured on the embedded model


@pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file()
                    or not (EMBEDDED_LORAS / "stripes.safetensors").is_file(),
                    reason="the embedded model and its LoRAs are not in models/")
def test_stripes_live_in_the_first_and_last_blocks_with_attention():
    """Measured with `evaluation.lora_block_scores` (stripe energy, the evaluation's measure, on its 8 prompts):
    leaving one block out at a time, only IN03 (down_blocks.1's attention, 8x8) and OUT03 (up_blocks.1's last)
    matter: without OUT03 the energy falls from 0.0901 to 0.0378 (the base is 0.0477), without IN03 to 0.0660;
    without any other block it stays within 0.0884-0.1008. At 20 steps: every block 0.0901, IN03 and OUT03 alone
    0.0848 (88% of the effect), every block but those two 0.0344 (below the base: none of it); `in` alone 0.0342,
    `out` alone 0.0668 (45%), `mid` alone 0.0434. At the 8 steps asserted here (the Fast preset's): base 0.0464,
    every block 0.0926, IN03 and OUT03 alone 0.0914 (97% of the effect), the others 0.0334 (-28%)."""
    studio = evaluation.load()
    carried, others = "in=0:mid=0:out=0:IN03=1:OUT03=1", "IN03=0:OUT03=0"
    scores = evaluation.lora_block_scores(studio, "stripes", [carried, others], steps=8)
    effect = scores[""] - scores["none"]
    assert effect > 0.02
    assert scores[carried] - scores["none"] > 0.75 * effect
    assert scores[others] - scores["none"] < 0.25 * effect
    notes = studio.loras.activate([LoraChoice("stripes.safetensors", 0.5, "out")])
    outside = studio.base.unet.get_submodule("down_blocks.0.resnets.0.conv1")  # a block without attention
    adapter = studio.loras.active[0]
    assert outside.scaling[adapter] == pytest.approx(0.5 * outside.lora_alpha[adapter] / outside.r[adapter])
    assert any("lie outside the blocks with attention and run at its weight 0.5" in note for note in notes)


def test_the_readme_names_every_preset():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`{preset.name}`" in readme for preset in PRESETS.values())
