import io
import json
import time

import pytest
from PIL import Image

from pipelines import metadata
from pipelines.errors import StudioError
from pipelines.metadata import (
    MAX_GRAPH_VISITS,
    MAX_PARAMETERS_CHARS,
    decode_user_comment,
    format_parameters,
    parse_generation_text,
    parse_parameters,
    parse_settings_line,
    save_png,
    tag_with_parameters,
)


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


def test_a_key_run_without_a_colon_is_skipped_and_a_quote_that_does_not_close_is_plain_text():
    assert parse_settings_line("no key here, Steps: 2") == {"Steps": "2"}
    assert parse_settings_line('A: "x" y, B: 1') == {"A": '"x" y', "B": "1"}  # the quote closes before junk
    assert parse_settings_line('A: "never closed, B: 1') == {"A": '"never closed', "B": "1"}
    assert parse_settings_line(",: x, C: 3") == {"C": "3"}  # an empty key is none
    assert parse_settings_line("A: 1, : y") == {"A": "1", "": "y"}  # a blank one is, as A1111's own regex reads it


# Hostile text. A1111's texts are a few KB, and parsing holds the GIL, so one slow parse stalls every client. The
# studio refuses text past MAX_PARAMETERS_CHARS (64 KiB); the parser itself must still be linear. Here the limit is
# lifted and each shape is parsed at 1 MiB. Before this test the parser took, on this machine, 28 s for 64 KiB
# of a run without a colon (quadratic: 0.11 s at 4 KiB, 2 s at 16 KiB; about two hours at 1 MiB), 1 s for 64 KiB
# of trailing LoRA tags and 0.18 s for a 64 KiB tag of colons (both quadratic); linear, 1 MiB parses in well under
# a second, so the 2 s bound below separates the two by orders of magnitude and says nothing finer about speed.
HOSTILE_MIB = 1 << 20
HOSTILE = {
    "a run without a colon": "a prompt\n" + "a" * HOSTILE_MIB,
    "many commas": "a prompt\n" + "a b," * (HOSTILE_MIB // 4),
    "empty keys": "x\n" + ",:" * (HOSTILE_MIB // 2),
    "quotes that never close": "x\nSteps: 1, " + 'k: "\\",' * (HOSTILE_MIB // 7),
    "deep escaped quotes": 'x\nSteps: 1, ControlNet 0: "' + '\\"' * (HOSTILE_MIB // 2),
    "huge numbers": "x\nSteps: " + "9" * (HOSTILE_MIB // 3) + ", Seed: " + "9" * (HOSTILE_MIB // 3) + ", Size: 1x1",
    "trailing LoRA tags": "a cat" + " <lora:a:1>" * (HOSTILE_MIB // 11) + " x\nSteps: 1",
    "a LoRA tag of colons": "<lora:n" + ":1" * (HOSTILE_MIB // 2) + ">\nSteps: 1",
    "tags that never close": "<lora:" * (HOSTILE_MIB // 6) + "\nSteps: 1",
}


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_a_mebibyte_of_hostile_text_parses_in_linear_time(shape, monkeypatch):
    monkeypatch.setattr(metadata, "MAX_PARAMETERS_CHARS", 2 * HOSTILE_MIB)
    monkeypatch.setattr(metadata, "MAX_JSON_CHARS", 2 * HOSTILE_MIB)
    start = time.perf_counter()
    parse_generation_text(HOSTILE[shape])
    assert time.perf_counter() - start < 2.0


def test_text_past_the_limit_is_refused_naming_the_limit():
    at_limit = "a" * (MAX_PARAMETERS_CHARS - 9) + "\nSteps: 1"
    assert len(at_limit) == MAX_PARAMETERS_CHARS and parse_parameters(at_limit)["Steps"] == "1"
    for parse in (parse_parameters, parse_settings_line, parse_generation_text):
        with pytest.raises(StudioError, match="has 65,537 characters; the studio reads at most 65,536"):
            parse(at_limit + "x")
    with pytest.raises(StudioError, match="at most 1,048,576 of ComfyUI or InvokeAI JSON"):
        parse_generation_text("{" + " " * (1 << 20) + "}")
    with pytest.raises(StudioError, match="looks like JSON but does not parse"):
        parse_generation_text('{"a":' + "[" * 40_000 + "]" * 40_000 + "}")  # deeper than json follows


# EXIF UserComment (EXIF 2.3, tag 0x9286): an 8-byte character code, then the text.
@pytest.mark.parametrize(
    "raw",
    [
        b"UNICODE\0" + "a cat, ü\nSteps: 20".encode("utf-16-be"),  # piexif's "unicode", which A1111 and Forge use
        b"UNICODE\0" + "a cat, ü\nSteps: 20".encode("utf-16-le"),  # other writers' byte order
        b"UNICODE\0" + "a cat, ü\nSteps: 20".encode("utf-16"),  # with a byte-order mark
        b"ASCII\0\0\0" + "a cat, ü\nSteps: 20".encode(),
        b"\0" * 8 + "a cat, ü\nSteps: 20\0\0".encode(),  # undefined, padded
    ],
)
def test_user_comment_in_each_character_code(raw):
    assert decode_user_comment(raw) == "a cat, ü\nSteps: 20"


# ComfyUI's API format, as its SaveImage node (nodes.py) writes it into the `prompt` chunk: the default graph.
COMFYUI_DEFAULT = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery, glass bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def test_comfyui_default_graph_in_a1111_terms():
    parsed = parse_generation_text(json.dumps(COMFYUI_DEFAULT))
    assert (parsed.source, parsed.prompt, parsed.negative_prompt) == (
        "ComfyUI", "beautiful scenery, glass bottle", "text, watermark"
    )
    assert parsed.settings == {"Steps": "20", "CFG scale": "8", "Seed": "156680208700286", "Sampler": "Euler",
                               "Model": "v1-5-pruned-emaonly.safetensors", "Size": "512x512"}
    assert parsed.notes == []  # VAEDecode and SaveImage only make the picture


def test_comfyui_links_are_followed_through_controlnets_combines_and_lora_chains():
    graph = json.loads(json.dumps(COMFYUI_DEFAULT))
    graph["3"]["inputs"].update(model=["11", 0], positive=["13", 0], negative=["13", 1], sampler_name="dpmpp_2m",
                                scheduler="karras")
    graph["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "ink.safetensors", "strength_model": 0.7,
                                                          "strength_clip": 0.7, "model": ["4", 0], "clip": ["4", 1]}}
    graph["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "style/pastel.safetensors",
                                                                   "strength_model": 1.5, "model": ["10", 0]}}
    graph["12"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0],
                                                                   "conditioning_2": ["14", 0]}}
    graph["13"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["12", 0], "negative": ["7", 0], "control_net": ["15", 0], "image": ["16", 0], "strength": 1}}
    graph["14"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "in the style of ink", "clip": ["4", 1]}}
    graph["15"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}}
    graph["16"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
    parsed = parse_generation_text(json.dumps(graph))
    assert (parsed.prompt, parsed.negative_prompt) == ("beautiful scenery, glass bottle", "text, watermark")
    assert parsed.loras == [("ink.safetensors", 0.7), ("style/pastel.safetensors", 1.5)]  # in the order applied
    assert (parsed.settings["Sampler"], parsed.settings["Schedule type"]) == ("DPM++ 2M", "Karras")
    notes = "\n".join(parsed.notes)
    assert "The positive conditioning joins 2 prompts; the first was read" in notes and "in the style of ink" in notes
    assert ("Not read from the ComfyUI graph: ConditioningCombine (node 12), ControlNetApplyAdvanced (node 13), "
            "ControlNetLoader (node 15), LoadImage (node 16).") in notes


def test_comfyui_advanced_sampler_image_to_image_and_a_second_pass():
    graph = json.loads(json.dumps(COMFYUI_DEFAULT))
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": 7, "steps": 30, "cfg": 5.5, "sampler_name": "euler_ancestral",
        "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable",
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0]}}
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    # A hires pass after it, which refines the first pass's latents: the first pass is the one read.
    graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": 1.5}}
    graph["13"] = {"class_type": "KSampler", "inputs": {**COMFYUI_DEFAULT["3"]["inputs"], "latent_image": ["12", 0],
                                                        "denoise": 0.5, "seed": 99}}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    parsed = parse_generation_text(json.dumps(graph))
    assert parsed.settings["Seed"] == "7" and parsed.settings["Sampler"] == "Euler a"
    assert (parsed.settings["Mode"], parsed.settings["Denoising strength"]) == ("img2img", "1")
    notes = "\n".join(parsed.notes)
    assert "a PNG holds no source image" in notes
    assert "LatentUpscaleBy (node 12), KSampler (node 13)" in notes


def test_a_cyclic_or_huge_comfyui_graph_is_followed_a_bounded_number_of_links():
    cycle = {str(n): {"class_type": "KSampler", "inputs": {"seed": 1, "latent_image": [str((n + 1) % 5000), 0],
                                                           "model": [str((n + 1) % 5000), 0]}} for n in range(5000)}
    parsed = parse_generation_text(json.dumps(cycle))  # every sampler refines another: the first is read
    assert parsed.settings["Seed"] == "1"
    assert f"followed through {MAX_GRAPH_VISITS:,} links only" in parsed.notes[-1]
    chain = {"1": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["2", 0]}}}
    chain.update({str(n): {"class_type": "LoraLoader", "inputs": {"lora_name": f"l{n}", "strength_model": 1,
                                                                  "model": [str(n + 1), 0]}} for n in range(2, 9000)})
    parsed = parse_generation_text(json.dumps(chain))
    assert len(parsed.loras) <= MAX_GRAPH_VISITS and "links only" in parsed.notes[-1]


def test_invokeai_metadata_and_its_older_sd_metadata():
    # InvokeAI 4 and 5 write this object as the `invokeai_metadata` text chunk (the core_metadata node's output).
    invokeai = {
        "generation_mode": "sdxl_img2img", "positive_prompt": "a cat", "negative_prompt": "blurry", "width": 1024,
        "height": 768, "seed": 1234, "rand_device": "cpu", "cfg_scale": 6.5, "steps": 30, "scheduler": "dpmpp_2m_k",
        "strength": 0.6, "model": {"key": "k", "hash": "blake3:1", "name": "Juggernaut XL", "base": "sdxl"},
        "loras": [{"model": {"key": "l", "name": "add_detail", "base": "sdxl", "type": "lora"}, "weight": 0.75}],
        "app_version": "5.4.2",
    }
    parsed = parse_generation_text(json.dumps(invokeai))
    assert (parsed.source, parsed.prompt, parsed.negative_prompt, parsed.loras) == (
        "InvokeAI", "a cat", "blurry", [("add_detail", 0.75)]
    )
    assert parsed.settings == {
        "Steps": "30", "CFG scale": "6.5", "Seed": "1234", "Size": "1024x768", "Sampler": "DPM++ 2M",
        "Schedule type": "Karras", "Mode": "img2img", "Denoising strength": "0.6", "Model": "Juggernaut XL",
        "rand_device": "cpu", "app_version": "5.4.2",
    }
    # InvokeAI 2.x: `sd-metadata`, the prompt a list of weighted prompts.
    legacy = {"model": "stable diffusion", "model_weights": "stable-diffusion-1.5", "app_id": "invoke-ai/InvokeAI",
              "app_version": "2.2.5", "image": {"prompt": [{"prompt": "a dog [blurry]", "weight": 1.0}], "steps": 50,
                                                "cfg_scale": 7.5, "height": 512, "width": 512, "seed": 42,
                                                "type": "txt2img", "sampler": "k_euler_a", "variations": []}}
    parsed = parse_generation_text(json.dumps(legacy))
    assert (parsed.source, parsed.prompt) == ("InvokeAI 2", "a dog [blurry]")
    assert {key: parsed.settings[key] for key in ("Steps", "Seed", "Size", "Sampler", "Model")} == {
        "Steps": "50", "Seed": "42", "Size": "512x512", "Sampler": "Euler a", "Model": "stable-diffusion-1.5"}
    assert parsed.settings["image variations"] == "(a list of 0)"
    assert "negative prompt in [brackets]" in parsed.notes[0]


def test_json_in_no_known_layout_is_refused_by_what_it_is():
    with pytest.raises(StudioError, match=r"JSON in a layout the studio does not read \(keys: Prompt, Seed\)"):
        parse_generation_text('{"Prompt": "a cat", "Seed": 1}')
    with pytest.raises(StudioError, match="no KSampler or KSamplerAdvanced node"):
        parse_generation_text(json.dumps({"1": {"class_type": "SamplerCustom", "inputs": {}}}))
    # A prompt that starts with a brace is still A1111's layout.
    assert parse_generation_text("{a|b} cat\nSteps: 3").prompt == "{a|b} cat"
