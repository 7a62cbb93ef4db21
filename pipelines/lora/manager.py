"""LoRA adapters on the shared base pipeline: loaded once, kept, and switched with `set_adapters`.

Every mode's pipeline shares the base UNet and text encoder(s), so adapters loaded here apply in every
mode. Repeated load/unload grows memory (diffusers #8532, peft #1639), so adapters stay loaded
(least recently used ones are deleted past a count and byte cap) and a request only switches the
active set and weights. An empty set disables the LoRA layers, which then return the base layers'
output unchanged, so the image equals the base image exactly.

Two ways to run faster (`pipelines/acceleration.py` decides): with a compiled UNet, the UNet's part of each LoRA
goes into the compiled UNet's one slot (`slot.py`) instead of an adapter of its own, so a switch never recompiles;
with `fuse`, each set is fused into the weights when it is made active, and the touched base weights are kept so
that the next different set starts from the base exactly (peft's unfuse subtracts, which is not exact in floating
point). A set is fused on its first request, not its second: fusing costs less than what one image spends in
unfused layers (28 ms against 0.26 s on the embedded model; 0.32 s against 1.9 s for a real-size SD1.5 image at
256 px and 10 steps), and a request's pixels then do not depend on the one before it.

Limits (adapters kept, bytes kept, file and upload sizes) are arguments, so the caller's settings decide them.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.loaders.lora_base import (
    disable_lora_for_text_encoder,
    enable_lora_for_text_encoder,
    set_adapters_for_text_encoder,
)
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from pipelines.block_weights import BlockError, UnetBlock, canonical_spec, diffusers_scales, multipliers, unet_blocks
from pipelines.errors import StudioError
from pipelines.lora.formats import check_family, plan_adapter
from pipelines.lora.hashes import content_digest, is_hashed
from pipelines.lora.library_internals import TRANSFORMERS_ADAPTER_LOGGER
from pipelines.lora.metadata import family_from_metadata
from pipelines.lora.safety import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UPLOAD_BYTES, SafetensorsHeader, read_header
from pipelines.lora.slot import UNET, UNET_PREFIX, LoraSlot, SlotLora
from pipelines.lora.sources import (
    HUB_PREFIX,
    HubSource,
    LoraEntry,
    LoraLibrary,
    UploadStore,
    describe_file,
)
from pipelines.parameters import PARAMETERS
from pipelines.request import LoraChoice

DEFAULT_MAX_LOADED = 8
DEFAULT_MAX_BYTES = 2048 * 2**20  # adapters kept loaded, all together
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
LORAS_FIELD = PARAMETERS["loras"].label  # what a refusal of block weights names (the library sits below validation)


@dataclass
class LoadedAdapter:
    adapter_name: str
    label: str
    nbytes: int
    notes: list[str]
    slot_lora: SlotLora | None = None  # with a compiled UNet: the UNet's factors, written into the slot
    unet_layers: tuple[str, ...] = ()  # the UNet layers it changes, as the UNet names them


class LoraManager:
    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: str,
        lora_dir: str | Path,
        *,
        max_loaded: int = DEFAULT_MAX_LOADED,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        uploads: UploadStore | None = None,
        hub: HubSource | None = None,
        slot_rank: int | None = None,
        fuse: bool = False,
    ) -> None:
        """`max_upload_bytes` and `max_file_bytes` size the upload store and Hub source made here; a store or
        source passed in keeps its own limits. `slot_rank`: give the UNet a LoRA slot of that rank, before it is
        compiled; `fuse`: fuse each set into the weights when it is made active."""
        self.pipe = pipe
        self.family = family
        self.library = LoraLibrary(lora_dir)
        self.uploads = uploads or UploadStore(max_bytes=max_upload_bytes)
        self.hub = hub or HubSource(max_file_bytes=max_file_bytes)
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()  # least recently used first
        self.loads = 0  # files read and loaded as adapters so far (a Ray Serve replica reports it)
        self._lock = threading.RLock()
        self.slot = LoraSlot(pipe.unet, slot_rank) if slot_rank else None
        self.fuse = fuse
        self._active: tuple[tuple[str, AdapterWeight], ...] = ()  # adapter name and weight, as applied
        # Whether the LoRA layers are enabled, None when unknown (a load or delete may wrap new layers, enabled).
        # Enabling walks every layer and took about 40% of a switch, so it is skipped when nothing changes.
        self._layers_enabled: bool | None = None
        self._fused_set: tuple | None = None  # the set and weights fused into the base weights, if any
        self._pristine: dict[torch.nn.Module, torch.Tensor] = {}  # base weights of the fused layers

    @property
    def loaded(self) -> list[str]:
        return [adapter.label for adapter in self._loaded.values()]

    @property
    def loaded_bytes(self) -> int:
        return sum(adapter.nbytes for adapter in self._loaded.values())

    def activate(self, choices: Sequence[LoraChoice]) -> list[str]:
        """Make exactly `choices` active with their weights; returns notes for the person.

        A request's LoRAs arrive checked and merged by name (`pipelines/validation.py`); the same file under two
        names is one adapter, whose weights add up.
        """
        with self._lock:
            notes: list[str] = []
            if len(choices) > self.max_loaded:
                raise StudioError(f"At most {self.max_loaded} LoRAs can be active at once; {len(choices)} were chosen.")
            # Block weights make another set: the same LoRAs at other block weights are other scales.
            wanted = tuple((choice.name, choice.weight, choice.blocks) for choice in choices)
            if wanted != self._fused_set:
                self.unfuse()
            active: dict[str, AdapterWeight] = {}
            for choice in choices:
                adapter = self._ensure_loaded(choice.name)
                weight = self._adapter_weight(choice)
                previous = active.get(adapter.adapter_name)
                active[adapter.adapter_name] = weight if previous is None else previous.plus(weight)
                notes += adapter.notes
                if choice.blocks:
                    notes += self._block_notes(adapter, choice)
            self._evict(keep=set(active))
            if wanted != self._fused_set:
                self._switch(active)
                if self.fuse and active:
                    self._fuse(wanted)
            return notes

    def load(self, names: Sequence[str]) -> list[str]:
        """Load the LoRAs `names` without making them active (a Serve replica loads a LoRA set when it is given the
        set to hold); returns their adapter names. Loading one already loaded only marks it recently used."""
        with self._lock:
            adapter_names = [self._ensure_loaded(name).adapter_name for name in names]
            self._evict(keep={*adapter_names, *self.active})
            return adapter_names

    def unload(self, adapter_names: Iterable[str]) -> None:
        """Delete these adapters from the model (a Serve replica lets go of a LoRA set). An active one is switched
        off with them: the next request sets its own LoRAs, or the base model, again."""
        with self._lock:
            going = set(adapter_names) & set(self._loaded)
            if not going:
                return
            self.unfuse()  # fused weights would keep the deleted adapters in the base
            for adapter_name in going:
                self._forget(adapter_name)
                del self._loaded[adapter_name]
            self._active = tuple((name, weight) for name, weight in self._active if name not in going)

    @property
    def active(self) -> list[str]:
        """Adapter names of the LoRAs the last request made active (empty: the base model)."""
        return [name for name, _ in self._active]

    def _switch(self, active: dict[str, AdapterWeight]) -> None:
        """Make exactly `active` (adapter name -> weight) apply, in the slot or as adapters."""
        self._active = tuple(active.items())
        if self.slot is not None:
            self._switch_slot(active)
        elif not active:
            if self._loaded and self._layers_enabled is not False:
                self.pipe.disable_lora()
                self._layers_enabled = False
        else:
            if self._layers_enabled is not True:
                self.pipe.enable_lora()
                self._layers_enabled = True
            if any(weight.blocks for weight in active.values()) and not self._unet_names_readable():
                # diffusers reads a UNet LoRA layer's block from the first four parts of its name, for every layer of
                # every adapter; a shorter name (conv_in, time_embedding.linear_1, kept wrapped by peft after its
                # adapter is deleted) fails in it. The same scales are then set layer by layer.
                self.pipe.set_adapters(list(active), adapter_weights=[weight.weight for weight in active.values()])
                self._scale_per_layer(active)
                return
            lists = self.pipe.get_list_adapters()
            self.pipe.set_adapters(list(active), adapter_weights=[
                weight.for_diffusers([part for part, names in lists.items() if name in names])
                for name, weight in active.items()
            ])
            self._unscaled_at_weight(active)

    def _unet_names_readable(self) -> bool:
        """Whether diffusers' per-block scales can read the block of every UNet LoRA layer from its name."""
        return not any(name.count(".") < 3 for name, module in self.pipe.unet.named_modules()
                       if isinstance(module, BaseTunerLayer))

    def _scale_per_layer(self, active: dict[str, AdapterWeight]) -> None:
        """Block weights set layer by layer (peft's public `set_scale`), as diffusers' per-block scales set them."""
        for layer, module in self.pipe.unet.named_modules():
            if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A"):
                for name, weight in active.items():
                    if weight.blocks and name in module.lora_A:
                        module.set_scale(name, weight.for_layer(layer))

    def _unscaled_at_weight(self, active: dict[str, AdapterWeight]) -> None:
        """With block weights diffusers gives the UNet's LoRA layers outside its blocks with attention 1.0, whatever
        the LoRA's weight; those layers run at the LoRA's weight instead (peft's public `set_scale`)."""
        blocked = {name: weight for name, weight in active.items() if weight.blocks}
        if not blocked:
            return
        for module in self._unscaled_layers(self.pipe.unet).values():
            for name, weight in blocked.items():
                if name in module.lora_A:
                    module.set_scale(name, weight.weight)

    def _unscaled_layers(self, unet: torch.nn.Module) -> dict[str, BaseTunerLayer]:
        """The UNet's LoRA layers that diffusers' per-block scales do not reach: outside every down or up block with
        attention and outside the middle block's attention."""
        reached = _reached_prefixes(unet)
        return {name: module for name, module in unet.named_modules()
                if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A")
                and not f"{name}.".startswith(reached)}

    def _switch_slot(self, active: dict[str, AdapterWeight]) -> None:
        """The UNet's part goes into the compiled UNet's slot; text encoders are not compiled and switch as usual.
        pipe.set_adapters would also (de)activate adapters on the UNet, which a compiled UNet must never see."""
        by_name = {adapter.adapter_name: adapter for adapter in self._loaded.values()}
        self.slot.write([(by_name[name].slot_lora, weight.for_layer) for name, weight in active.items()
                         if by_name[name].slot_lora is not None and by_name[name].slot_lora.factors])
        lists = self.pipe.get_list_adapters()
        for component in TEXT_ENCODERS:
            encoder = getattr(self.pipe, component, None)
            present = [name for name in active if name in lists.get(component, ())]
            if encoder is None or component not in lists:
                continue
            if present:
                enable_lora_for_text_encoder(encoder)
                set_adapters_for_text_encoder(present, encoder, [active[name].weight for name in present])
            else:
                disable_lora_for_text_encoder(encoder)

    @property
    def blocks(self) -> tuple[UnetBlock, ...]:
        """The UNet's blocks that block weights name (`pipelines/block_weights.py`)."""
        return unet_blocks(self.pipe.unet.config)

    def _adapter_weight(self, choice: LoraChoice) -> AdapterWeight:
        """What `choice` sets: its weight, and with block weights its weight times each block's multiplier."""
        if not choice.blocks:
            return AdapterWeight(choice.weight)
        blocks = self.blocks
        try:
            by_name = multipliers(canonical_spec(choice.blocks), [block.name for block in blocks])
        except BlockError as error:
            raise StudioError(f"{LORAS_FIELD}: the block weights of {choice.label!r}: "
                              f"{error}") from None
        return AdapterWeight(choice.weight, tuple((block, choice.weight * by_name[block.name]) for block in blocks))

    def _block_notes(self, adapter: LoadedAdapter, choice: LoraChoice) -> list[str]:
        """What block weights cannot scale in this LoRA, said as the request runs it."""
        texts = [part for part, names in self.pipe.get_list_adapters().items()
                 if part != UNET and adapter.adapter_name in names]
        text_part = f"; its text encoder part runs at its weight {choice.weight:g}, unscaled" if texts else ""
        notes = [f"{choice.label}: block weights (@{choice.blocks}) scale the UNet's blocks with attention and the "
                 f"ResNets beside them{text_part}."]
        if self.slot is not None:  # the slot scales its layers by block; what it leaves out was said at load
            return notes
        reached = _reached_prefixes(self.pipe.unet)
        outside = [layer for layer in adapter.unet_layers if not layer.startswith(reached)]
        if outside:
            notes.append(f"{choice.label}: {len(outside)} of its layers lie outside the blocks with attention and run "
                         f"at its weight {choice.weight:g}, not scaled by block (for example "
                         f"{', '.join(outside[:3])}): diffusers' per-block scales do not reach them.")
        return notes

    def activate_fused_or_not(self, choices: Sequence[LoraChoice], fuse: bool) -> list[str]:
        """`activate` with fusing switched on or off from now on, the set made again either way: what a benchmark
        compares (fused against unfused, with the fusing itself timed or kept out of the timing)."""
        with self._lock:
            self.fuse = fuse
            self.unfuse()
            return self.activate(choices)

    def _fuse(self, wanted: tuple) -> None:
        """Fuse the active set (`wanted`, as `activate` keys it) into the weights, keeping the base weights of the
        layers it touches."""
        if self.slot is not None:
            return
        names = {name for name, _ in self._active}
        for module in self._lora_layers():
            if names & set(module.lora_A) and module not in self._pristine:
                self._pristine[module] = host_copy(module.get_base_layer().weight)
        self.pipe.fuse_lora(components=list(self._components()), adapter_names=list(names))
        self._fused_set = wanted

    def unfuse(self) -> None:
        """Back to the unfused adapters, with the base weights exactly as they were before fusing."""
        with self._lock:
            if self._fused_set is None:
                return
            self.pipe.unfuse_lora(components=list(self._components()))
            with torch.no_grad():
                for module, weight in self._pristine.items():
                    module.get_base_layer().weight.copy_(weight)
            self._pristine.clear()
            self._fused_set = None

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [module for component in self._components().values() for module in component.modules()
                if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A")]

    def available(self) -> list[LoraEntry]:
        """The LoRA folder's files, described from their headers; unreadable files are listed with the reason."""
        entries = []
        for name in self.library.names():
            try:
                entries.append(describe_file(self.library.path(name), name, "folder", self.max_file_bytes))
            except StudioError as error:
                entries.append(LoraEntry(name, 0, None, (), f"refused: {error}", "folder"))
        return entries

    def check(self, name: str) -> LoraEntry:
        """Resolve any LoRA name (folder, upload path or hub id), check its header and family, describe it."""
        path = self.resolve(name)
        self._preflight(path)
        source = "hub" if name.startswith(HUB_PREFIX) else "upload" if Path(name).is_absolute() else "folder"
        return describe_file(path, name, source, self.max_file_bytes)

    def add_upload(self, uploaded: str | Path) -> LoraEntry:
        self.uploads.check(uploaded)
        self._preflight(Path(uploaded))
        path = self.uploads.add(uploaded)
        return describe_file(path, str(path), "upload", self.max_file_bytes)

    def resolve(self, name: str) -> Path:
        if not isinstance(name, str) or not name.strip():
            raise StudioError("A LoRA needs a name: a file from the LoRA folder, an upload or hub:owner/repo.")
        if name.startswith(HUB_PREFIX):
            return self.hub.fetch(name)
        if Path(name).is_absolute():
            if not self.uploads.owns(name):
                raise StudioError(
                    f"{Path(name).name!r} is neither in the LoRA folder nor among this session's uploads."
                )
            path = Path(name)
            if not path.is_file():
                raise StudioError(f"The upload {path.name!r} is no longer available; upload it again.")
            return path
        return self.library.path(name)

    def _ensure_loaded(self, name: str) -> LoadedAdapter:
        path = self.resolve(name)
        if is_hashed(path) and (known := self._adapter_name(path)) in self._loaded:
            self._loaded.move_to_end(known)
            return self._loaded[known]
        header = self._preflight(path)
        adapter_name = self._adapter_name(path)
        if adapter_name in self._loaded:  # the same content under another name
            self._loaded.move_to_end(adapter_name)
            return self._loaded[adapter_name]
        adapter = self._load(path, header, adapter_name, label=Path(name).name)
        self._loaded[adapter_name] = adapter
        self.loads += 1
        return adapter

    def _preflight(self, path: Path) -> SafetensorsHeader:
        """Header, family and layer shapes, all checked before a single tensor is read."""
        header = read_header(path, self.max_file_bytes)
        shapes = {key: info.shape for key, info in header.tensors.items()}
        check_family(shapes, self.family, family_from_metadata(header.metadata))
        plan_adapter(_meta_tensors(shapes), self._components(), header.metadata)
        return header

    def _load(self, path: Path, header: SafetensorsHeader, adapter_name: str, label: str) -> LoadedAdapter:
        plan = plan_adapter(load_file(path), self._components(), header.metadata)
        dtype = self.pipe.unet.dtype
        state = {key: value.to(dtype) for key, value in plan.state_dict.items()}
        slot_lora = None
        try:
            if self.slot is not None:
                slot_lora = self.slot.prepare(state, plan.network_alphas, plan.adapter_metadata)
                state = {key: value for key, value in state.items() if not key.startswith(UNET_PREFIX)}
            self._load_into_components(state, plan.network_alphas, plan.adapter_metadata, adapter_name)
        except StudioError:
            self._forget(adapter_name)
            raise
        except Exception as error:
            self._forget(adapter_name)
            raise StudioError(f"The LoRA {label!r} could not be applied to this model: {error}") from None
        notes = plan.report(label, sent=state, held=self._held_tensors(adapter_name))
        if slot_lora is not None and slot_lora.outside:
            notes.append(
                f"{label}: {len(slot_lora.outside)} layer(s) outside the transformer blocks are not applied with "
                f"--compile (for example {', '.join(slot_lora.outside[:3])})."
            )
        nbytes = sum(value.numel() * value.element_size() for value in state.values())
        nbytes += slot_lora.nbytes if slot_lora is not None else 0
        unet_layers = sorted({key.removeprefix(UNET_PREFIX).split(".lora_")[0] for key in plan.state_dict
                              if key.startswith(UNET_PREFIX)})
        return LoadedAdapter(adapter_name, label, nbytes, notes, slot_lora, tuple(unet_layers))

    def _load_into_components(self, state: dict, alphas: dict | None, adapter_metadata: dict | None, name: str) -> None:
        """diffusers' public per-component loaders: `load_lora_weights` reads kohya alphas only from kohya-named keys
        and PEFT metadata only from a file's header, and these keys are already converted. (diffusers' private
        `_pipeline` argument only pauses CPU offloading, which the studio does not use.)"""
        # diffusers refuses network alphas and adapter metadata together; the metadata is the newer record.
        alphas = None if adapter_metadata else alphas
        self._layers_enabled = None
        common = dict(network_alphas=alphas, adapter_name=name, metadata=adapter_metadata)
        if any(key.startswith("unet.") for key in state):
            self.pipe.load_lora_into_unet(state, unet=self.pipe.unet, **common)
        for component in TEXT_ENCODERS:
            if any(key.startswith(component + ".") for key in state):
                # transformers logs a LOAD REPORT listing the base layers and every other adapter as MISSING on
                # each text-encoder load; what this adapter really lacks is found by `AdapterPlan.report`.
                with _quieter(TRANSFORMERS_ADAPTER_LOGGER, logging.ERROR):
                    self.pipe.load_lora_into_text_encoder(
                        state, text_encoder=getattr(self.pipe, component), prefix=component, **common
                    )

    def _held_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors as the model holds them, keyed like the plan's state dict."""
        held = {}
        for component, adapters in self.pipe.get_list_adapters().items():
            if adapter_name in adapters:
                module = getattr(self.pipe, component)
                for key, value in get_peft_model_state_dict(module, adapter_name=adapter_name).items():
                    held[f"{component}.{key}"] = value
        return held

    def _components(self) -> dict[str, torch.nn.Module]:
        components = {"unet": self.pipe.unet}
        for name in TEXT_ENCODERS:
            if getattr(self.pipe, name, None) is not None:
                components[name] = getattr(self.pipe, name)
        return components

    def _evict(self, keep: set[str]) -> None:
        for adapter_name in list(self._loaded):
            over = len(self._loaded) > self.max_loaded or self.loaded_bytes > self.max_bytes
            if not over:
                return
            if adapter_name not in keep:
                self._forget(adapter_name)
                del self._loaded[adapter_name]

    def _forget(self, adapter_name: str) -> None:
        self._layers_enabled = None
        present = {name for names in self.pipe.get_list_adapters().values() for name in names}
        if adapter_name in present:
            self.pipe.delete_adapters(adapter_name)

    def _adapter_name(self, path: Path) -> str:
        """One name per content: the same file under two names is one adapter."""
        return "lora_" + content_digest(path, self.max_file_bytes)[:16]


@dataclass(frozen=True)
class AdapterWeight:
    """How strongly one adapter applies: `weight` everywhere, or with block weights (`blocks`: each of the UNet's
    blocks with attention and its scale) `weight` on the text encoders and the layers outside those blocks."""

    weight: float
    blocks: tuple[tuple[UnetBlock, float], ...] = ()

    def plus(self, other: AdapterWeight) -> AdapterWeight:
        """One file asked for twice (under two names): the scales add up, block by block."""
        if not self.blocks and not other.blocks:
            return AdapterWeight(self.weight + other.weight)
        mine, theirs = self.scales(other), other.scales(self)
        return AdapterWeight(self.weight + other.weight, tuple((block, mine[block] + theirs[block]) for block in mine))

    def scales(self, like: AdapterWeight) -> dict[UnetBlock, float]:
        """Block -> scale, over the blocks `like` names too (the weight on each where this one names none)."""
        return dict(self.blocks) if self.blocks else {block: self.weight for block, _ in like.blocks}

    def for_diffusers(self, components: list[str]) -> float | dict[str, object]:
        """`pipe.set_adapters`' weight for this adapter, on the components that hold it."""
        if not self.blocks:
            return self.weight
        return {component: diffusers_scales(dict(self.blocks)) if component == "unet" else self.weight
                for component in components}

    def for_layer(self, layer: str) -> float:
        """The scale of one UNet layer (named as the UNet names its modules) as diffusers' per-block scales give it:
        its block's; a ResNet or sampler of a down or up block, the attention of its index in that block; else (outside
        the blocks with attention) the weight."""
        scales = {block.address: scale for block, scale in self.blocks}
        inside = next((scale for address, scale in scales.items() if layer.startswith(f"{address}.")), None)
        if inside is not None:
            return inside
        parts = layer.split(".")
        return scales.get(f"{parts[0]}.{parts[1]}.attentions.{parts[3]}", self.weight) if len(parts) > 3 else \
            self.weight


def _blocks_with_attention(unet: torch.nn.Module) -> list[str]:
    """Where diffusers' per-block scales reach: each down or up block with attention whole (its ResNets follow the
    attention of their index) and the middle block's attention."""
    prefixes = [f"{side}_blocks.{index}" for side in ("down", "up")
                for index, block in enumerate(getattr(unet, f"{side}_blocks")) if hasattr(block, "attentions")]
    return [*prefixes, "mid_block.attentions"]


def _reached_prefixes(unet: torch.nn.Module) -> tuple[str, ...]:
    return tuple(f"{prefix}." for prefix in _blocks_with_attention(unet))


@contextmanager
def _quieter(logger_name: str, level: int) -> Iterator[None]:
    """Raise one logger's level for the duration of a call, then put it back."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _meta_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Shapes without storage for the layer check; scalars (alphas) must be real, the conversion reads them."""
    return {key: torch.empty(shape, device="meta") if shape else torch.tensor(1.0) for key, shape in shapes.items()}


def host_copy(weight: torch.Tensor) -> torch.Tensor:
    """A copy of `weight` in CPU memory: the touched weights of a fused SDXL set reach 4 GiB, GPU memory that the
    images need. Pinned when it comes from a GPU, so the copy back when the set changes runs at full bus speed."""
    copy = weight.detach().to("cpu", copy=True)
    return copy.pin_memory() if weight.device.type == "cuda" else copy
