"""The style reference: an IP-Adapter and its image encoder per model family, loaded once onto the studio's base.

Each family declares its adapter here, beside its ControlNets (`pipelines/modes.py`): SD 1.5 and SDXL take h94's
published ones; a model folder's `studio.json` names its own under "style_adapter" (the embedded model's, relative to
its folder); the settings (STUDIO_STYLE_ADAPTER, STUDIO_STYLE_ENCODER) override both, and "none" switches it off.
Only `.safetensors` files are read, the image encoder's too (the pickle rule): h94's repo has both kinds.

The adapter is loaded with diffusers' `load_ip_adapter` onto the studio's one base pipeline on the first request that
gives a style image, never before: until then every run is exactly today's code path. Its attention processors live
on the shared UNet, so every mode's pipeline built with `from_pipe` uses them, and the image encoder is registered on
the pipelines built before the load. Once loaded it stays: a request without a style image runs with every IP-Adapter
scale at 0 and zero image embeddings, and diffusers' IP-Adapter processor skips an adapter whose scales are all 0, so
its pixels are those of a studio that never loaded it (tests/test_style_reference.py compares them bit for bit).

`style_mode` picks which attention layers see the reference, as InstantStyle (Wang et al. 2024) does: in SDXL "style"
is `up_blocks.0.attentions.1` and "layout" `down_blocks.2.attentions.1`. The same places are found in any UNet: the
middle attention of the first up block with attentions, and the last attention of the last down block with them. A
model's studio.json may give its own presets.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HFValidationError
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers import CLIPVisionModelWithProjection

from pipelines.errors import StudioError
from pipelines.loader import display_name
from pipelines.lora.hashes import AUTOV2_DIGITS, BLOCK_BYTES
from pipelines.parameters import PARAMETERS, STYLE_MODES
from pipelines.validation import field_name

logger = logging.getLogger(__name__)

FIELD = field_name(PARAMETERS["style_image"])  # "Style reference (style_image)"
NAME = PARAMETERS["style_image"].name
MODE_FIELD = field_name(PARAMETERS["style_mode"])
OFF = "none"  # STUDIO_STYLE_ADAPTER=none
SETTING = "STUDIO_STYLE_ADAPTER"
ENCODER_BESIDE = "image_encoder"  # where an adapter's image encoder is when nothing says otherwise
# The keys of an IP-Adapter file in h94's layout (what `load_ip_adapter` splits a .safetensors file by).
IMAGE_PROJ, IP_ADAPTER = "image_proj", "ip_adapter"


@dataclass(frozen=True)
class StyleAdapter:
    """An IP-Adapter's weights and image encoder, named as diffusers' `load_ip_adapter` names them."""

    source: str  # a Hub repository or a local folder
    subfolder: str
    weight_name: str
    # Beside the weights (a name without '/'), or a path from the source's root (with '/'), as diffusers reads it.
    image_encoder_folder: str = ENCODER_BESIDE
    default_scale: float = 1.0
    modes: Mapping[str, object] | None = None  # the model's own presets; None: InstantStyle's blocks in its UNet

    @property
    def weight_path(self) -> str:
        return "/".join(filter(None, [self.subfolder, self.weight_name]))

    @property
    def encoder_path(self) -> str:
        if "/" in self.image_encoder_folder or os.path.isabs(self.image_encoder_folder):
            return self.image_encoder_folder
        return "/".join(filter(None, [self.subfolder, self.image_encoder_folder]))

    @property
    def shown(self) -> str:
        return f"{display_name(self.source)}/{self.weight_path}"

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir() or self.source.startswith((".", "/", "~"))


H94 = "h94/IP-Adapter"
# family -> its adapter; InstantStyle's style-only preset is meant at scale 1.0.
STYLE_ADAPTERS: Mapping[str, StyleAdapter] = {
    "sd15": StyleAdapter(H94, "models", "ip-adapter_sd15.safetensors", "models/image_encoder"),  # ViT-H encoder
    "sdxl": StyleAdapter(H94, "sdxl_models", "ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder"),  # bigG
}


def style_adapter_for(
    family: str, model_source: str, model_entry: Mapping | None, setting: str | None = None,
    encoder_setting: str | None = None,
) -> tuple[StyleAdapter | None, str]:
    """The adapter for the model served: the settings', else the model folder's own, else its family's; or None and
    why there is none (said to a request that gives a style image)."""
    if setting and setting.strip().lower() == OFF:
        return None, f"the setting {SETTING} is '{OFF}'"
    family_default = STYLE_ADAPTERS[family].default_scale if family in STYLE_ADAPTERS else 1.0
    if setting:
        return from_setting(setting, encoder_setting, family_default), ""
    if model_entry is not None:
        return from_manifest(model_source, model_entry)
    if family in STYLE_ADAPTERS:
        return STYLE_ADAPTERS[family], ""
    return None, (f"this model has no style adapter yet: none is declared for its family ({family}), its folder's "
                  f"studio.json names none (\"style_adapter\"), and {SETTING} is not set")


def from_setting(text: str, encoder: str | None, default_scale: float) -> StyleAdapter:
    """STUDIO_STYLE_ADAPTER: a local weight file, or `owner/repo/subfolder/file.safetensors` on the Hub;
    STUDIO_STYLE_ENCODER: its image encoder's folder (local, or a path in that repository), by default
    `image_encoder` beside the weights."""
    text = text.strip()
    path = Path(text).expanduser()
    if path.is_file() or text.startswith((".", "/", "~")):
        return StyleAdapter(str(path.parent), "", path.name, encoder or ENCODER_BESIDE, default_scale)
    owner, _, rest = text.partition("/")
    repo, _, inside = rest.partition("/")
    subfolder, _, weight_name = inside.rpartition("/")
    return StyleAdapter(f"{owner}/{repo}", subfolder, weight_name, encoder or ENCODER_BESIDE, default_scale)


def from_manifest(model_source: str, entry: Mapping) -> tuple[StyleAdapter | None, str]:
    """studio.json's "style_adapter": {subfolder, weight_name, image_encoder_folder, default_scale, modes}, relative to
    the model's folder."""
    try:
        adapter = StyleAdapter(
            str(Path(model_source).resolve()), str(entry.get("subfolder", "")), str(entry["weight_name"]),
            str(entry.get("image_encoder_folder", ENCODER_BESIDE)), float(entry.get("default_scale", 1.0)),
            dict(entry["modes"]) if entry.get("modes") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return None, f"the model's studio.json has a \"style_adapter\" entry the studio cannot read ({error!r})"
    return adapter, ""


def instantstyle_presets(unet: torch.nn.Module) -> dict[str, object]:
    """InstantStyle's presets at the places they take in `unet` (see the module's docstring), as diffusers'
    `set_ip_adapter_scale` takes them; "everything" is every layer at once (a plain IP-Adapter)."""
    ups = [(index, len(block.attentions)) for index, block in enumerate(unet.up_blocks) if hasattr(block, "attentions")]
    downs = [(index, len(block.attentions)) for index, block in enumerate(unet.down_blocks)
             if hasattr(block, "attentions")]
    up, layers = ups[0]
    style = {"up": {f"block_{up}": [1.0 if layer == layers // 2 else 0.0 for layer in range(layers)]}}
    down, layers = downs[-1]
    layout = {"down": {f"block_{down}": [0.0] * (layers - 1) + [1.0]}}
    return {"style": style, "style and layout": {**layout, **style}, "everything": 1.0}


def check_blocks(config: object, unet: torch.nn.Module) -> None:
    """Per-block scales name blocks with attention layers, a number or one per layer each: diffusers passes over a
    block it does not have without a word."""
    if not isinstance(config, Mapping):
        return
    for side in ("down", "up"):
        blocks = config.get(side)
        have = {f"block_{index}": len(block.attentions) for index, block in enumerate(getattr(unet, f"{side}_blocks"))
                if hasattr(block, "attentions")}
        for block, layers in (blocks.items() if isinstance(blocks, Mapping) else ()):
            if block not in have:
                raise StudioError(f"{MODE_FIELD}: this model's {side} blocks with attention layers are "
                                  f"{', '.join(have)}; it has no {side}.{block}.")
            if isinstance(layers, list) and len(layers) not in (1, have[block]):
                raise StudioError(f"{MODE_FIELD}: {side}.{block} has {have[block]} attention layers; give one scale "
                                  f"or {have[block]}, not {len(layers)}.")


def scaled(config: object, scale: float) -> object:
    """Every number of a per-block scale config multiplied by `scale`."""
    if isinstance(config, Mapping):
        return {key: scaled(value, scale) for key, value in config.items()}
    if isinstance(config, list):
        return [scaled(value, scale) for value in config]
    return float(config) * scale


def picture_hash(picture: str | os.PathLike | Image.Image) -> str:
    """A style image as its PNG parameters name it: the first 10 hex digits of the file's SHA-256 (Civitai's AutoV2
    width); a picture given in memory is hashed as its PNG."""
    digest = hashlib.sha256()
    if isinstance(picture, Image.Image):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        digest.update(buffer.getvalue())
    else:
        with open(picture, "rb") as file:
            for block in iter(lambda: file.read(BLOCK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()[:AUTOV2_DIGITS]


class StyleReference:
    """The served model's style adapter: loaded onto `base` by the first request with a style image, then kept.

    Call `set_scales` before every run once it is loaded, and pass `pipeline_kwargs` to the run's pipeline."""

    def __init__(self, adapter: StyleAdapter | None, why_none: str, base: DiffusionPipeline, device: str,
                 dtype: torch.dtype, compiled: bool) -> None:
        self.adapter = adapter
        self.base = base
        self.device = device
        self.dtype = dtype
        self._refusal: StudioError | None = None
        if adapter is None:
            self._refusal = StudioError(f"{FIELD} cannot be used: {why_none}. Leave it empty.")
        elif compiled:
            # Loading swaps the compiled UNet's attention processors: torch would compile it again, and a graph made
            # ahead of time (ZeroGPU) cannot take them at all.
            self._refusal = StudioError(f"{FIELD} is off with STUDIO_COMPILE (--compile): its "
                                        "IP-Adapter changes the compiled UNet's attention layers. Leave it empty, or "
                                        "serve without compiling.")
        self._width = 0  # the image embeddings' width, once loaded
        self._presets: dict[str, object] = {}

    @property
    def default_scale(self) -> float:
        return self.adapter.default_scale if self.adapter is not None else 1.0

    @property
    def loaded(self) -> bool:
        return bool(self._width)

    def load(self, pipes: Iterable[DiffusionPipeline]) -> None:
        """Load the adapter onto the base once (a failure is remembered and said again), and give the image encoder
        to `pipes`, the pipelines built from the base before it came."""
        if self._refusal is not None:
            raise self._refusal
        if self.loaded:
            return
        try:
            self._load()
        except StudioError as error:
            self._refusal = error
            raise
        for pipe in pipes:
            if pipe is not self.base:
                pipe.register_modules(image_encoder=self.base.image_encoder,
                                      feature_extractor=self.base.feature_extractor)

    def _load(self) -> None:
        adapter = self.adapter
        if Path(adapter.weight_name).suffix.lower() != ".safetensors":
            raise StudioError(
                f"Refusing to load the style adapter {adapter.weight_name!r} ({NAME}): only .safetensors files are "
                f"read; {Path(adapter.weight_name).suffix or 'a file without a suffix'} files are Python pickles, "
                f"which can run arbitrary code when loaded. Use the adapter's .safetensors release."
            )
        try:
            weights = _read_weights(_weights_file(adapter))
            encoder = _load_encoder(adapter, self.dtype)
        except (OSError, ValueError, HFValidationError, SafetensorError) as error:
            logger.warning("loading the style adapter %s failed: %s", adapter.shown, error)
            where = ("is not in the model's folder" if adapter.is_local else
                     "is not cached here and the Hugging Face Hub cannot be reached")
            raise StudioError(
                f"{FIELD} cannot be used: its IP-Adapter {adapter.shown!r} or its image encoder "
                f"({adapter.encoder_path}) {where}, or has no .safetensors weights. Leave it empty, or set {SETTING} "
                f"(and STUDIO_STYLE_ENCODER) to local files."
            ) from error
        _check_fits(adapter, weights, self.base.unet, encoder)
        encoder.requires_grad_(False)  # frozen as the loader freezes every served model
        # With offload the encoder waits on the CPU like the other models; the offload hooks move it.
        offloaded = getattr(self.base.unet, "_hf_hook", None) is not None
        self.base.register_modules(image_encoder=encoder.to("cpu" if offloaded else self.device))
        self.base.load_ip_adapter(weights, subfolder="", weight_name="", image_encoder_folder=None)
        self._presets = {**instantstyle_presets(self.base.unet), **(adapter.modes or {})}
        self._width = encoder.config.projection_dim
        logger.info("style adapter %s loaded", adapter.shown)

    def set_scales(self, style_image: object, mode: str, scale: float) -> None:
        """The adapter's scales for the next run: the mode's blocks at `scale`, or all 0 without a style image."""
        if not self.loaded:
            return
        if style_image is None:
            self.base.set_ip_adapter_scale(0.0)
            return
        config = json.loads(mode) if mode not in STYLE_MODES else self._presets[mode]
        check_blocks(config, self.base.unet)
        try:
            self.base.set_ip_adapter_scale(scaled(config, scale))
        except ValueError as error:  # a block this UNet does not have
            raise StudioError(f"{MODE_FIELD}: {error}") from None

    def pipeline_kwargs(self, picture: Image.Image | None, guidance_scale: float, images: int) -> dict[str, object]:
        """The run's IP-Adapter arguments: the style image, or once loaded zero embeddings for `images` images (the
        UNet then needs some; at scale 0 they are never used)."""
        if picture is not None:
            return {"ip_adapter_image": picture}
        if not self.loaded:
            return {}
        unet = self.base.unet
        guided = guidance_scale > 1 and unet.config.time_cond_proj_dim is None  # the pipelines' own test
        zeros = torch.zeros((2 if guided else 1) * images, 1, self._width, dtype=unet.dtype)
        return {"ip_adapter_image_embeds": [zeros]}


def _weights_file(adapter: StyleAdapter) -> str:
    if adapter.is_local:
        path = Path(adapter.source).expanduser() / adapter.weight_path
        if not path.is_file():
            raise FileNotFoundError(path)
        return str(path)
    return hf_hub_download(adapter.source, adapter.weight_name, subfolder=adapter.subfolder or None)


def _read_weights(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """h94's layout as `load_ip_adapter` splits it: `image_proj.*` and `ip_adapter.*`."""
    state: dict[str, dict[str, torch.Tensor]] = {IMAGE_PROJ: {}, IP_ADAPTER: {}}
    with safe_open(path, framework="pt", device="cpu") as file:
        for key in file.keys():
            part, _, name = key.partition(".")
            if part in state:
                state[part][name] = file.get_tensor(key)
    return state


def _load_encoder(adapter: StyleAdapter, dtype: torch.dtype) -> CLIPVisionModelWithProjection:
    if adapter.is_local:
        folder = Path(adapter.source).expanduser() / adapter.encoder_path
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    return CLIPVisionModelWithProjection.from_pretrained(adapter.source, subfolder=adapter.encoder_path, dtype=dtype,
                                                         use_safetensors=True)


def _check_fits(adapter: StyleAdapter, weights: Mapping[str, Mapping[str, torch.Tensor]], unet: torch.nn.Module,
                encoder: CLIPVisionModelWithProjection) -> None:
    """Refuse an adapter made for another model before it touches the UNet: a failed load would leave it half
    changed."""
    projection = weights[IMAGE_PROJ].get("proj.weight")
    if projection is None:
        raise StudioError(f"The style adapter {adapter.shown!r} ({NAME}) is not a plain IP-Adapter (no "
                          "image_proj.proj): the studio takes those (ip-adapter_sd15, ip-adapter_sdxl), not Plus or "
                          "FaceID ones.")
    keys = [weights[IP_ADAPTER][key] for key in weights[IP_ADAPTER] if key.endswith("to_k_ip.weight")]
    widths = sorted({tensor.shape[1] for tensor in keys})
    layers = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    cross = unet.config.cross_attention_dim
    if widths != [cross] or len(keys) != layers:
        raise StudioError(
            f"The style adapter {adapter.shown!r} ({NAME}) does not fit this model: it was made for {len(keys)} "
            f"cross-attention layers {'/'.join(map(str, widths)) or '?'} wide, and this model has {layers} of width "
            f"{cross} (an adapter of another family?)."
        )
    if projection.shape[1] != encoder.config.projection_dim:
        raise StudioError(
            f"The style adapter {adapter.shown!r} ({NAME}) takes image embeddings {projection.shape[1]} wide, and its "
            f"image encoder ({adapter.encoder_path}) gives {encoder.config.projection_dim}: they do not belong "
            "together."
        )
