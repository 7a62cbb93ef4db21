"""Published LoRA layouts (keys, shapes, dtypes, metadata of real files) against real-size model
structures built on the meta device: the key mapping, family detection and skip reports are checked
exactly as for the real files, without a single full-size weight in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from embedded.synthetic_loras import write_layout_file
from pipelines.errors import StudioError
from pipelines.lora.formats import check_family, detect_layout, family_from_shapes, plan_adapter
from pipelines.lora.metadata import describe_metadata
from pipelines.lora.safety import read_header

LAYOUTS = Path(__file__).parent / "fixtures" / "lora_layouts"
LAYOUT_FILES = sorted(path.name for path in LAYOUTS.glob("*.json"))
UNET_CONFIGS = {
    "sd15": dict(cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}


def _clip(hidden: int, layers: int, heads: int, intermediate: int, projection: bool = False):
    config = CLIPTextConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        projection_dim=1280,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


@pytest.fixture(scope="module")
def real_size_models() -> dict[str, dict[str, torch.nn.Module]]:
    """SD 1.5, SD 2 and SDXL UNets and text encoders at full size, on the meta device (no memory)."""
    with torch.device("meta"):
        return {
            "sd15": {"unet": UNet2DConditionModel(**UNET_CONFIGS["sd15"]), "text_encoder": _clip(768, 12, 12, 3072)},
            "sd2": {"unet": UNet2DConditionModel(**UNET_CONFIGS["sd2"]), "text_encoder": _clip(1024, 23, 16, 4096)},
            "sdxl": {
                "unet": UNet2DConditionModel(**UNET_CONFIGS["sdxl"]),
                "text_encoder": _clip(768, 12, 12, 3072),
                "text_encoder_2": _clip(1280, 32, 20, 5120, projection=True),
            },
        }


def load_layout(name: str) -> dict:
    return json.loads((LAYOUTS / name).read_text())


def meta_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors with the real shapes but no storage; alphas are real scalars (the conversion reads them)."""
    return {key: torch.empty(shape, device="meta") if shape else torch.tensor(8.0) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def layout_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layouts")
    paths = {
        name: write_layout_file(folder / f"{Path(name).stem}.safetensors", load_layout(name)) for name in LAYOUT_FILES
    }
    slider = "keys_only/invokeai_sdxl_kohya_slider_keysonly.json"
    paths[slider] = write_layout_file(folder / "slider.safetensors", load_layout(slider))
    return paths


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {key: info.shape for key, info in read_header(path).tensors.items()}


@pytest.mark.parametrize("name", LAYOUT_FILES)
def test_published_layout_maps_every_layer_onto_its_own_family(name, layout_files, real_size_models):
    layout = load_layout(name)
    shapes = header_shapes(layout_files[name])
    assert len(shapes) == len(layout["tensors"])
    assert family_from_shapes(shapes) == layout["family"]
    plan = plan_adapter(meta_tensors(shapes), real_size_models[layout["family"]])
    weights = [key for key in layout["tensors"] if not key.endswith(".alpha")]
    assert plan.unmatched == []
    assert not plan.skipped
    assert len(plan.state_dict) == len(weights)  # every down/up pair lands on a layer, none lost
    assert sum(plan.loaded_layers.values()) == len(weights) // 2


@pytest.mark.parametrize("name", LAYOUT_FILES)
def test_published_layout_is_refused_on_every_other_family(name, layout_files, real_size_models):
    layout = load_layout(name)
    shapes = header_shapes(layout_files[name])
    for family, components in real_size_models.items():
        if family == layout["family"]:
            continue
        with pytest.raises(StudioError, match="made for") as refused:
            check_family(shapes, family, None)
        assert {"sd15": "SD 1.5", "sd2": "SD 2.x", "sdxl": "SDXL"}[layout["family"]] in str(refused.value)
        with pytest.raises(StudioError, match="does not fit"):  # and the layer-by-layer check agrees
            plan_adapter(meta_tensors(shapes), components)


def test_layouts_are_recognised():
    detected = {name: detect_layout(list(load_layout(name)["tensors"])) for name in LAYOUT_FILES}
    assert detected["muchai_sd15_locon.json"] == "LoCon (kohya)"
    assert detected["catundchat_sd15_diffusers_old.json"] == "diffusers (attention processors)"
    assert detected["timohavdk_sd15_diffusers.json"] == "diffusers"


def test_slider_with_self_attention_only_is_recognised_as_sdxl(layout_files, real_size_models):
    path = layout_files["keys_only/invokeai_sdxl_kohya_slider_keysonly.json"]
    shapes = header_shapes(path)
    assert family_from_shapes(shapes) == "sdxl"
    plan = plan_adapter(meta_tensors(shapes), real_size_models["sdxl"])
    assert plan.unmatched == [] and plan.loaded_layers["unet"] == 280


def test_sdxl_modelspec_metadata_is_read_from_the_header(layout_files):
    info = describe_metadata(read_header(layout_files["muchai_sdxl_locon.json"]))
    assert info.family == "sdxl"
    assert info.title == "sdxl_LCM_lora_rank1"
    assert info.fields["ss_network_module"] == "networks.lora"


def kohya_text_encoder(prefix: str, layers: int, hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """kohya's published text-encoder naming: lora_te_text_model_encoder_layers_<i>_<module>."""
    sizes = {
        "self_attn_q_proj": (hidden, hidden),
        "self_attn_k_proj": (hidden, hidden),
        "self_attn_v_proj": (hidden, hidden),
        "self_attn_out_proj": (hidden, hidden),
        "mlp_fc1": (hidden, intermediate),
        "mlp_fc2": (intermediate, hidden),
    }
    shapes = {}
    for layer in range(layers):
        for module, (size_in, size_out) in sizes.items():
            name = f"{prefix}_text_model_encoder_layers_{layer}_{module}"
            shapes |= {
                f"{name}.lora_down.weight": (8, size_in),
                f"{name}.lora_up.weight": (size_out, 8),
                f"{name}.alpha": (),
            }
    return shapes


def test_kohya_sd15_text_encoder_and_unet_keys_all_land(real_size_models):
    shapes = kohya_text_encoder("lora_te", 12, 768, 3072)
    shapes |= {key: tuple(v["shape"]) for key, v in load_layout("muchai_sd15_locon.json")["tensors"].items()}
    plan = plan_adapter(meta_tensors(shapes), real_size_models["sd15"])
    assert plan.unmatched == []
    assert dict(plan.loaded_layers) == {"unet": 278, "text_encoder": 72}
    assert len(plan.network_alphas) == 278 + 72  # kohya alphas travel with the layers


def test_kohya_sdxl_two_text_encoders_land_and_mark_sdxl(real_size_models):
    shapes = kohya_text_encoder("lora_te1", 12, 768, 3072) | kohya_text_encoder("lora_te2", 32, 1280, 5120)
    assert family_from_shapes(shapes) == "sdxl"
    plan = plan_adapter(meta_tensors(shapes), real_size_models["sdxl"])
    assert plan.unmatched == []
    assert dict(plan.loaded_layers) == {"text_encoder": 72, "text_encoder_2": 192}
    with pytest.raises(StudioError, match="made for SDXL"):
        check_family(shapes, "sd15", None)


def test_lycoris_dora_and_stray_keys_are_set_aside_not_fatal(real_size_models):
    shapes = {key: tuple(v["shape"]) for key, v in load_layout("muchai_sd15_locon.json")["tensors"].items()}
    loha = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    lokr = "lora_unet_mid_block_attentions_0_proj_out"
    shapes.pop(f"{lokr}.lora_down.weight"), shapes.pop(f"{lokr}.lora_up.weight")
    shapes |= {
        f"{loha}.hada_w1_a": (1280, 4),
        f"{loha}.hada_w1_b": (4, 5120),
        f"{loha}.hada_w2_a": (1280, 4),
        f"{loha}.hada_w2_b": (4, 5120),
        f"{lokr}.lokr_w1": (8, 8),
        f"{lokr}.lokr_w2": (160, 160),
        "lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale": (1, 320),
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": (4, 320),
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": (320, 4),
    }
    plan = plan_adapter(meta_tensors(shapes), real_size_models["sd15"])
    skipped = {reason.split(" ")[0]: count for reason, count in plan.skipped.items()}
    assert skipped == {"LoHa": 4, "LoKr": 3, "DoRA": 1}  # LoKr: lokr_w1, lokr_w2 and the module's alpha
    assert plan.unmatched == ["unet.down_blocks.7.attentions.0.proj_in"]
    assert plan.loaded_layers["unet"] == 277  # the LoCon layers still load
    assert not any(".hada_" in key or ".lokr_" in key or "dora" in key for key in plan.state_dict)


def test_a_file_of_only_loha_layers_is_refused_with_the_reason(real_size_models):
    loha = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    shapes = {f"{loha}.hada_w1_a": (1280, 4), f"{loha}.hada_w1_b": (4, 5120), f"{loha}.alpha": ()}
    with pytest.raises(StudioError, match="Nothing in this LoRA.*LoHa"):
        plan_adapter(meta_tensors(shapes), real_size_models["sd15"])


def test_factors_of_different_ranks_are_refused_as_damaged(real_size_models):
    layer = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    shapes = {f"{layer}.lora_down.weight": (4, 1280), f"{layer}.lora_up.weight": (1280, 8), f"{layer}.alpha": ()}
    with pytest.raises(StudioError, match=r"damaged.*ranks \(4 and 8\) differ"):
        plan_adapter(meta_tensors(shapes), real_size_models["sd15"])


def test_metadata_claim_decides_only_when_shapes_are_silent():
    unet_only_self_attention = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": (4, 320)
    }
    with pytest.raises(StudioError, match="made for SDXL"):
        check_family(unet_only_self_attention, "sd15", "sdxl")
    check_family(unet_only_self_attention, "sd15", "sd15")
    tiny_cross_attention = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 32)}
    check_family(tiny_cross_attention, "embedded", "sd15")  # the shapes (checked layer by layer later) win
    sd15_cross_attention = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768)}
    with pytest.raises(StudioError, match="made for SD 1.5, but the loaded model is the embedded model"):
        check_family(sd15_cross_attention, "embedded", None)
