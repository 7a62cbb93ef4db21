"""The LoRA inspector (`pipelines/lora/inspect.py`, the lab's "Inspect a LoRA" panel and `/lora_info`): the change per
block equals ||up @ down||_F x alpha / rank formed explicitly, on every layout the studio loads; the header is shown
whole but bounded; the embedded LoRAs inspect with their trigger words."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.lora.formats import ALPHA_OUTSIDE_KOHYA
from pipelines.lora.inspect import (
    COARSE,
    MAX_VALUE_CHARS,
    SD_17,
    SD_FULL,
    TOP_TAGS,
    XL_12,
    XL_FULL,
    change_norm,
    inspect_lora,
    layer_block,
    readable,
)
from pipelines.lora.sources import LoraLibrary
from pipelines.settings import EMBEDDED_LORAS
from ui.lora_lab import (
    block_chart,
    build_inspector,
    inspect_named,
    inspection_markdown,
    inspector_choices,
    on_inspect,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUTS = Path(__file__).parent / "fixtures" / "lora_layouts"
RANK = 2  # the published shapes at a small rank, so every file is written in a blink
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# (down, up) suffixes of each layout, as the test pairs them itself.
FACTOR_PAIRS = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
)
# The published layouts, and the LoRA Block Weight layout each one is charted in.
PUBLISHED = {
    "muchai_sd15_locon.json": SD_FULL,  # conv layers in the downsamplers and the lowest level: the 26 blocks
    "muchai_sdxl_locon.json": XL_FULL,
    "catundchat_sd15_diffusers_old.json": SD_17,
    "haseebae_sd15_diffusers_old.json": SD_17,
    "srikanth1408_sdxl_diffusers_old.json": XL_12,
    "timohavdk_sd15_diffusers.json": SD_17,
    "vfph55_sd2_diffusers.json": SD_17,
}


def random_lora(layout: dict, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Random factors of a published layout's keys and shapes (rank cut to RANK); alphas that differ by layer."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, (key, entry) in enumerate(layout["tensors"].items()):
        dtype = DTYPES[entry["dtype"] or "float32"]
        if key.endswith(".alpha"):
            tensors[key] = torch.tensor(float(index % 3 + 1), dtype=dtype)
            continue
        shape = list(entry["shape"])
        shape[0 if any(key.endswith(down) for down, _ in FACTOR_PAIRS) else 1] = RANK
        tensors[key] = torch.randn(shape, generator=generator).to(dtype)
    return tensors, {key: str(value) for key, value in (layout.get("metadata") or {}).items()}


def direct_norms(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each layer's ||up @ down||_F x alpha / rank, with up @ down formed (conv factors as matrices)."""
    norms = {}
    for key, down in tensors.items():
        for down_suffix, up_suffix in FACTOR_PAIRS:
            if key.endswith(down_suffix):
                layer = key.removesuffix(down_suffix)
                up = tensors[layer + up_suffix]
                alpha = tensors.get(layer + ".alpha")
                scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
                product = up.flatten(1).float() @ down.flatten(1).float()
                norms[layer] = float(product.square().sum()) ** 0.5 * scale
    return norms


def written(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    path = tmp_path / name
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata or {})
    return path


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_layer_and_block_equals_the_product_formed(name, tmp_path):
    tensors, metadata = random_lora(json.loads((LAYOUTS / name).read_text()))
    inspection = inspect_lora(written(tmp_path, "lora.safetensors", tensors, metadata))
    expected = direct_norms(tensors)
    assert {layer.layer: layer.norm for layer in inspection.layers} == pytest.approx(expected, rel=1e-4)
    assert inspection.block_layout == PUBLISHED[name]
    assert list(inspection.blocks) == list(PUBLISHED[name].blocks)
    for block, total in inspection.blocks.items():
        assert total == pytest.approx(sum(v for k, v in expected.items() if layer_block(k) == block), rel=1e-4, abs=0)
    assert sum(inspection.coarse.values()) == pytest.approx(sum(expected.values()), rel=1e-4)
    assert inspection.notes == ()


@pytest.mark.parametrize(
    "layer, block",
    [  # as A1111 names kohya's layers and LoRA Block Weight numbers them
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
        ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
        ("text_encoder.text_model.encoder.layers.0.self_attn.k_proj", "BASE"),
        ("lora_unet_conv_in", "IN00"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
        ("lora_unet_down_blocks_0_resnets_1_conv2", "IN02"),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
        ("unet.down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k", "IN05"),
        ("down_blocks.2.attentions.0.transformer_blocks.0.attn1.processor.to_q", "IN07"),
        ("lora_unet_down_blocks_3_resnets_1_time_emb_proj", "IN11"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
        ("lora_unet_mid_block_attentions_0_proj_out", "MID"),
        ("lora_unet_middle_block_1_proj_in", "MID"),
        ("lora_unet_up_blocks_0_resnets_2_conv1", "OUT02"),
        ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
        ("lora_unet_up_blocks_1_attentions_0_proj_in", "OUT03"),
        ("unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", "OUT11"),
        ("lora_unet_output_blocks_8_1_proj_out", "OUT08"),
        ("lora_unet_time_embedding_linear_1", "OTHER"),
        ("lora_unet_conv_out", "OTHER"),
    ],
)
def test_layers_fall_in_the_blocks_lora_block_weight_gives_them(layer, block):
    assert layer_block(layer) == block


@pytest.mark.parametrize(
    "down_shape, up_shape", [((2, 320), (320, 2)), ((8, 4), (4, 8)), ((8, 32, 3, 3), (64, 8, 1, 1))]
)
def test_the_norm_is_the_product_s_whichever_way_is_cheaper(down_shape, up_shape):
    generator = torch.Generator().manual_seed(1)
    down, up = torch.randn(down_shape, generator=generator), torch.randn(up_shape, generator=generator)
    formed = torch.linalg.vector_norm(up.flatten(1).double() @ down.flatten(1).double())
    assert change_norm(down, up) == pytest.approx(float(formed), rel=1e-5)


def sd15_layer(name: str, size_in: int, size_out: int, alpha: float = 4.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(name))
    return {
        f"{name}.lora_down.weight": torch.randn(4, size_in, generator=generator),
        f"{name}.lora_up.weight": torch.randn(size_out, 4, generator=generator),
        f"{name}.alpha": torch.tensor(alpha),
    }


def test_a_lora_in_one_block_changes_only_that_block(tmp_path):
    block = "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0"  # OUT04 of SD 1.5
    tensors = sd15_layer(f"{block}_attn2_to_k", 768, 1280) | sd15_layer(f"{block}_attn2_to_q", 1280, 1280)
    inspection = inspect_lora(written(tmp_path, "out04.safetensors", tensors))
    assert inspection.family == "sd15" and inspection.block_layout == SD_17
    assert inspection.blocks["OUT04"] == pytest.approx(sum(direct_norms(tensors).values()), rel=1e-5)
    assert [block for block, total in inspection.blocks.items() if total] == ["OUT04"]
    assert [block for block, total in inspection.coarse.items() if total] == ["OUT"]


def test_an_embedded_lora_kept_to_its_middle_block_changes_only_mid(tmp_path):
    tensors = {key: value for key, value in load_file(EMBEDDED_LORAS / "stripes.safetensors").items()
               if key.startswith("unet.mid_block.")}
    inspection = inspect_lora(written(tmp_path, "mid.safetensors", tensors))
    assert inspection.block_layout == COARSE
    assert [block for block, total in inspection.blocks.items() if total] == ["MID"]
    assert inspection.blocks["MID"] == pytest.approx(sum(direct_norms(tensors).values()), rel=1e-5)


def test_text_encoder_layers_are_base_and_alpha_scales_them(tmp_path):
    tensors = sd15_layer("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, alpha=1.0)
    tensors |= sd15_layer("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", 768, 1280, alpha=8.0)
    inspection = inspect_lora(written(tmp_path, "te.safetensors", tensors))
    assert sorted(layer.scale for layer in inspection.layers) == [0.25, 2.0]
    norms = direct_norms(tensors)
    assert inspection.blocks["BASE"] == pytest.approx(norms["lora_te_text_model_encoder_layers_0_self_attn_q_proj"])
    assert inspection.blocks["MID"] == pytest.approx(
        norms["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"]
    )


def peft_lora(alpha_metadata: dict | None = None, alpha_keys: bool = False) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for block in ("down_blocks.0", "up_blocks.0"):
        layer = f"unet.{block}.attentions.0.transformer_blocks.0.attn1.to_q"
        tensors[f"{layer}.lora_A.weight"] = torch.randn(4, 64, generator=generator)
        tensors[f"{layer}.lora_B.weight"] = torch.randn(64, 4, generator=generator)
        if alpha_keys:
            tensors[f"{layer}.alpha"] = torch.tensor(1.0)
    metadata = {"lora_adapter_metadata": json.dumps(alpha_metadata)} if alpha_metadata else {}
    return tensors, metadata


def test_a_peft_file_s_alphas_come_from_diffusers_saved_config(tmp_path):
    up_layer = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    config = {"unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": {up_layer: 8}}
    inspection = inspect_lora(written(tmp_path, "peft.safetensors", *peft_lora(config)))
    scales = {layer.layer.split(".")[1]: layer.scale for layer in inspection.layers}
    assert scales == {"down_blocks": 0.5, "up_blocks": 2.0}


def test_alpha_keys_outside_kohya_are_left_out_as_diffusers_leaves_them(tmp_path):
    inspection = inspect_lora(written(tmp_path, "peft-alpha.safetensors", *peft_lora(alpha_keys=True)))
    assert {layer.scale for layer in inspection.layers} == {1.0}
    assert any(ALPHA_OUTSIDE_KOHYA in note and note.startswith("2 key(s)") for note in inspection.notes)


def test_layers_of_no_lora_layout_are_named_not_measured(tmp_path):
    tensors = sd15_layer("lora_unet_mid_block_attentions_0_proj_in", 1280, 1280)
    tensors["lora_unet_mid_block_attentions_0_proj_out.hada_w1_a"] = torch.randn(1280, 4)
    inspection = inspect_lora(written(tmp_path, "loha.safetensors", tensors))
    assert [layer.layer for layer in inspection.layers] == ["lora_unet_mid_block_attentions_0_proj_in"]
    assert any("LoHa" in note and "hada_w1_a" in note for note in inspection.notes)


def test_a_megabyte_tag_frequency_is_shown_bounded_and_counted_whole(tmp_path):
    tags = {f"tag {number:06d}": number % 97 + 1 for number in range(60_000)}
    tags["zkstyle"] = 5000
    metadata = {
        "ss_tag_frequency": json.dumps({"10_style": tags, "2_extra": {"zkstyle": 3, "hat": 2}}),
        "ss_dataset_dirs": json.dumps({"10_style": {"n_repeats": 10, "img_count": 40}}),
        "ss_epoch": "4",
        "ss_num_epochs": "10",
        "ss_network_dim": "4",
    }
    assert len(metadata["ss_tag_frequency"]) > 2**20
    tensors = sd15_layer("lora_unet_mid_block_attentions_0_proj_in", 1280, 1280)
    inspection = inspect_lora(written(tmp_path, "tagged.safetensors", tensors, metadata))
    header = dict(inspection.header)
    assert list(header) == sorted(metadata)
    shown, whole = header["ss_tag_frequency"], readable(metadata["ss_tag_frequency"])
    assert shown.startswith(whole[:MAX_VALUE_CHARS]) and len(shown) < MAX_VALUE_CHARS + 100
    assert f"{len(whole) - MAX_VALUE_CHARS:,} more characters" in shown
    assert header["ss_epoch"] == "4"
    assert inspection.trigger_words[0] == "zkstyle" and inspection.top_tags[0] == ("zkstyle", 5003)
    style, extra = inspection.tag_folders
    assert (style.name, style.images, style.repeats, style.distinct_tags) == ("10_style", 40, 10, 60_001)
    assert len(style.tags) == TOP_TAGS and style.tags[0] == ("zkstyle", 5000)
    others = sorted(((tag, count) for tag, count in tags.items() if tag != "zkstyle"), key=lambda item: -item[1])
    assert style.tags[1:] == tuple(others[: TOP_TAGS - 1])
    assert (extra.images, extra.repeats, extra.tags) == (None, None, (("zkstyle", 3), ("hat", 2)))
    assert dict(inspection.facts)["epoch"] == "4 of 10"


@pytest.mark.parametrize("name, trigger", [("stripes", "zkstripes"), ("mono", "zkmono")])
def test_the_embedded_loras_inspect_with_their_trigger_words(name, trigger):
    path = EMBEDDED_LORAS / f"{name}.safetensors"
    inspection = inspect_lora(path)
    assert inspection.trigger_words == (trigger,)
    assert inspection.family == "embedded" and inspection.layout == "PEFT"
    assert len(inspection.layers) == sum(key.endswith("lora_A.weight") for key in load_file(path))
    assert {layer.layer: layer.norm for layer in inspection.layers} == pytest.approx(direct_norms(load_file(path)))
    assert all(inspection.coarse[block] > 0 for block in ("IN", "MID", "OUT")) and inspection.notes == ()


@pytest.fixture(scope="module")
def embedded_library():
    """The lab's view of the embedded LoRA folder: enough of a studio for the inspector panel."""
    library = LoraLibrary(EMBEDDED_LORAS)
    return SimpleNamespace(loras=SimpleNamespace(library=library, resolve=library.path, max_file_bytes=2**30))


def test_the_panel_shows_trigger_words_hashes_and_blocks_in_order(embedded_library):
    inspection, hashes = inspect_named(embedded_library, "stripes")
    text = inspection_markdown("stripes.safetensors", inspection, hashes)
    whole = hashlib.sha256((EMBEDDED_LORAS / "stripes.safetensors").read_bytes()).hexdigest()
    assert "zkstripes" in text and f"AutoV2 `{whole[:10]}`" in text and "Embedded stripes" in text
    chart = block_chart(inspection)
    assert chart.sort == ["BASE", "IN", "MID", "OUT"]
    assert [row[0] for row in chart.value["data"]] == chart.sort
    assert [row[1] for row in chart.value["data"]] == pytest.approx(list(inspection.blocks.values()))


def test_the_menu_follows_the_lab_s_loras_and_keeps_the_one_shown(embedded_library):
    upload = "/tmp/gradio/abc/mine.safetensors"
    menu = inspector_choices(embedded_library, None, ["stripes.safetensors", "hub:owner/repo"], [upload])
    assert menu.choices == [(name, name) for name in ("mono.safetensors", "stripes.safetensors")] + [
        ("mine.safetensors (upload)", upload), ("hub:owner/repo", "hub:owner/repo")
    ]
    assert menu.value == "hub:owner/repo"  # nothing shown yet: the last LoRA chosen for the grid
    kept = inspector_choices(embedded_library, "mono.safetensors", ["stripes.safetensors"], [])
    assert kept.value == "mono.safetensors"


def test_the_page_refuses_another_session_s_upload(embedded_library):
    with pytest.raises(gr.Error, match="not one of this session's uploads"):
        on_inspect(embedded_library, str(EMBEDDED_LORAS / "mono.safetensors"), [])


@pytest.fixture(scope="module")
def inspector_client(embedded_library, serve_blocks):
    with gr.Blocks() as demo:
        build_inspector(embedded_library, gr.State([]), gr.Dropdown(multiselect=True), gr.Button())
    with serve_blocks(demo) as served:
        yield served


def test_lora_info_answers_what_the_panel_shows(inspector_client):
    info = inspector_client.predict(name="mono", api_name="/lora_info")
    data = (EMBEDDED_LORAS / "mono.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    assert info["trigger_words"] == ["zkmono"] and info["family"] == "embedded"
    assert info["hashes"]["autov2"] == hashlib.sha256(data).hexdigest()[:10]
    assert info["hashes"]["a1111"] == hashlib.sha256(data[header_end:]).hexdigest()[:12]
    assert list(info["blocks"]) == ["BASE", "IN", "MID", "OUT"] and info["blocks"]["OUT"] > 0
    assert info["header"]["modelspec.trigger_phrase"] == "zkmono"


def test_lora_info_refuses_an_upload_path_it_has_no_session_for(inspector_client):
    with pytest.raises(Exception, match="not one of this session's uploads"):
        inspector_client.predict(name=str(EMBEDDED_LORAS / "mono.safetensors"), api_name="/lora_info")
