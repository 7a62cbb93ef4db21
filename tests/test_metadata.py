import io

from PIL import Image

from pipelines.metadata import format_parameters, parse_parameters, save_png, tag_with_parameters


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


def test_quoted_values_with_commas_survive():
    text = format_parameters("x", "", {"ControlNet 0": "Module: canny, Weight: 1", "Seed": 7})
    parsed = parse_parameters(text)
    assert parsed["ControlNet 0"] == "Module: canny, Weight: 1"
    assert parsed["Seed"] == "7"


def test_multiline_prompts_are_kept():
    parsed = parse_parameters(format_parameters("line one\nline two", "neg one\nneg two", {"Steps": 3}))
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative_prompt"] == "neg one\nneg two"
