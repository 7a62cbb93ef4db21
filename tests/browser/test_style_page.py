"""The style reference as a person uses it on the embedded model: a picture of a red square on blue in the Text
tab's "Style reference", the prompt "a circle": the image has the reference's colours and the words' shape. The same
through gradio_client, and its PNG names the reference by hash."""

from __future__ import annotations

import hashlib

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import expect
from studio_page import block_labelled, error_texts, generate, open_tab, result_images, wait_for_image_or_error

from embedded import measures, world

REFERENCE = {"colour": "red", "background": "blue", "shape": "square"}
SEED = 50_800_003  # unseen by training (embedded/style_evaluation.py: pairs from EVALUATION_SEED_OFFSET + 800,000)


def reference_file(folder) -> str:
    scene = world.make_scene(SEED, "object", **REFERENCE)
    path = folder / "red-square-on-blue.png"
    Image.fromarray(scene.image).save(path)
    return str(path)


def colours_of(path: str) -> tuple[str, str]:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    mask = measures.object_mask(pixels)
    return measures.object_colour(pixels, mask), measures.nearest_colour(measures.background_colour(pixels))


def test_a_style_reference_in_the_text_tab_gives_its_colours(page, studio_url, keep_screenshot, tmp_path):
    panel = open_tab(page, studio_url, "Text")
    panel.get_by_label("Prompt", exact=True).fill("a circle")
    panel.get_by_text("Style reference", exact=True).click()
    block_labelled(panel, "Style reference").locator("input[type=file]").set_input_files(reference_file(tmp_path))
    expect(block_labelled(panel, "Style reference").locator("img")).to_be_visible()
    generate(panel)
    images = result_images(panel)
    wait_for_image_or_error(page, images)
    keep_screenshot("style-reference")
    assert not error_texts(page)
    info = panel.get_by_text("Style reference:", exact=False).first
    expect(info).to_be_visible()  # the parameters shown name the reference by hash


def test_through_the_api_the_image_takes_the_references_colours_and_the_png_names_it(studio_url, tmp_path):
    client = Client(studio_url, verbose=False)
    reference = reference_file(tmp_path)
    hits = 0
    for seed in range(4):
        gallery, *_ = client.predict(prompt="a circle", seed=seed, style_image=handle_file(reference),
                                     api_name="/text2img")
        hits += colours_of(gallery[0]["image"]) == (REFERENCE["colour"], REFERENCE["background"])
        with Image.open(gallery[0]["image"]) as png:
            parameters = png.text["parameters"]
    assert hits >= 3, hits  # both colours follow the reference in 94% of unseen pairs (docs/training.md)
    digest = hashlib.sha256(open(reference, "rb").read()).hexdigest()[:10]
    assert f"Style reference: {digest}" in parameters
