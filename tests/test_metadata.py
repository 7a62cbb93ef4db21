import io

import pytest
from PIL import Image

from pipelines.metadata import format_parameters, parse_parameters, parse_settings_line, save_png, tag_with_parameters


def test_parameters_round_trip_through_a_png_file():
    text = format_parameters(
        "a red circle, on a blue background",
        "green, blurry",
        {"Steps": 20, "Sampler": "DPM++ 2M Karras", "CFG scale": 4.0, "Seed": 42, "Size": "64x64", "Model": "embedded"},
        loras=[("stripes", 0.8), ("pastel", 1.0)],
    )
    buffer = io.BytesIO()
    save_png(tag_with_parameters(Image.new("RGB", (8, 8), "red"), text), buffer)
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    parsed = parse_parameters(reopened.info["parameters"])
    assert parsed["prompt"] == "a red circle, on a blue background"
    assert parsed["negative_prompt"] == "green, blurry"
    assert parsed["loras"] == [("stripes", 0.8), ("pastel", 1.0)]
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["Seed"] == "42"
    assert parsed["Size"] == "64x64"


def test_a1111_layout_puts_negative_prompt_and_settings_on_their_own_lines():
    text = format_parameters("cat", "dog", {"Steps": 5, "Seed": 1})
    assert text.split("\n") == ["cat", "Negative prompt: dog", "Steps: 5, Seed: 1"]
    assert format_parameters("cat", "", {"Steps": 5}).split("\n") == ["cat", "Steps: 5"]


def test_quoted_values_with_commas_colons_and_quotes_survive():
    tricky = 'Module: canny, Note: "a, b"\\'
    text = format_parameters("x", "", {"Steps": 2, "ControlNet 0": tricky, "Seed": 7})
    parsed = parse_parameters(text)
    assert parsed["ControlNet 0"] == tricky
    assert parsed["Seed"] == "7"


A1111 = (
    "masterpiece, <lora:add_detail:0.8>, a castle\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: abc, "
    'Model: v1-5, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, '
    "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, "
    'Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced", '
    'Lora hashes: "add_detail: 7c6bad76eb54, x: abc", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def test_a1111_settings_line_with_quoted_units_and_hashes():
    parsed = parse_parameters(A1111)
    assert parsed["prompt"] == "masterpiece, , a castle"  # A1111 removes the tag alone
    assert parsed["negative_prompt"] == "lowres, bad hands"
    assert parsed["loras"] == [("add_detail", 0.8)]
    assert (parsed["Sampler"], parsed["Schedule type"], parsed["Size"]) == ("DPM++ 2M", "Karras", "512x768")
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54, x: abc"
    assert parsed["TI hashes"] == "easynegative: c74b4e810b03"
    assert parsed["Version"] == "v1.10.1"
    unit = parse_settings_line(parsed["ControlNet 0"])
    assert unit["Model"] == "control_v11p_sd15_canny [d14c016b]"
    assert (unit["Module"], unit["Processor Res"], unit["Threshold B"], unit["Control Mode"]) == (
        "canny", "512", "200", "Balanced"
    )
    assert len(unit) == 12


def test_a1111_escaped_quotes_inside_a_quoted_value():
    parsed = parse_parameters('x\nSteps: 1, Sampler: Euler a, Template: "say \\"hi\\", then: go", Seed: 2')
    assert parsed["Template"] == 'say "hi", then: go'
    assert parsed["Seed"] == "2"


@pytest.mark.parametrize(
    ("tag", "lora", "partly_read"),
    [
        ("<lora:add_detail:0.8>", ("add_detail", 0.8), False),
        ("<lora:add_detail>", ("add_detail", 1.0), False),  # A1111's default weight
        ("<lora:hub:owner/repo:0.5>", ("hub:owner/repo", 0.5), False),  # the studio's own Hub names
        ("<lora:detail v2.1:-0.5>", ("detail v2.1", -0.5), False),
        ("<lora:pastel:0.6:0.3>", ("pastel", 0.6), True),  # text encoder 0.6, UNet 0.3
        ("<lora:pastel:te=0.6:unet=0.3>", ("pastel", 0.6), True),
        ("<lyco:locon_style:0.7>", ("locon_style", 0.7), False),
    ],
)
def test_lora_tags_as_a1111_writes_them(tag, lora, partly_read):
    parsed = parse_parameters(f"a cat, {tag}, sitting\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    assert parsed["loras"] == [lora]
    assert parsed["partly_read_lora_tags"] == ([tag.replace("lyco", "lora")] if partly_read else [])
    assert parsed["prompt"] == "a cat, , sitting"


def test_a_text_without_a_settings_line_is_all_prompt():
    assert parse_parameters("a cat\non a mat")["prompt"] == "a cat\non a mat"
    assert parse_parameters("a cat\nstyle: watercolor")["prompt"] == "a cat\nstyle: watercolor"
    only_settings = parse_parameters("Steps: 20, Sampler: Euler a, CFG scale: 7")
    assert only_settings["prompt"] == "" and only_settings["Steps"] == "20"


def test_the_studio_prompt_keeps_its_own_spaces_and_windows_line_ends_are_read():
    text = format_parameters("cat  ", "", {"Steps": 1}, loras=[("ink.safetensors", 1.0), ("hub:o/r", 0.5)])
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "cat  "
    assert parsed["loras"] == [("ink.safetensors", 1.0), ("hub:o/r", 0.5)]
    assert parse_parameters(text.replace("\n", "\r\n"))["Steps"] == "1"


def test_multiline_prompts_are_kept():
    parsed = parse_parameters(format_parameters("line one\nline two", "neg one\nneg two", {"Steps": 3}))
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative_prompt"] == "neg one\nneg two"
