"""GPU paths, checked on the CPU: what is switched on for a device, family, size and settings; LoRAs in a compiled
UNet's slot (same images as adapters, no recompilation on a switch); fused LoRA sets and the exact way back."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora
from pipelines.acceleration import (
    FP16_FIX_VAE,
    SpeedSettings,
    load_fp16_fix_vae,
    plan_acceleration,
    vae_savers,
    wants_fp16_fix_vae,
)
from pipelines.lora.manager import LoraManager
from pipelines.request import LoraChoice

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_cpu_gets_none_of_the_gpu_paths_and_says_why():
    plan = plan_acceleration("cpu", SpeedSettings(offload=True, compile=True, fuse_loras=True))
    assert (plan.offload, plan.compile, plan.sdxl_vae) == (False, None, None)
    assert plan.fuse_loras  # fusing is plain arithmetic: it works anywhere
    assert any("STUDIO_OFFLOAD" in note for note in plan.notes) and any("STUDIO_COMPILE" in note for note in plan.notes)


def test_loras_are_fused_on_the_cpu_unless_the_setting_says_no_and_on_cuda_only_when_it_says_yes():
    assert plan_acceleration("cpu", SpeedSettings()).fuse_loras  # measured there: scripts/benchmark_lora_tax.py
    assert not plan_acceleration("cpu", SpeedSettings(fuse_loras=False)).fuse_loras
    assert not plan_acceleration("cuda", SpeedSettings()).fuse_loras
    assert plan_acceleration("cuda", SpeedSettings(fuse_loras=True)).fuse_loras


def test_cuda_compiles_with_torch_compile_and_zerogpu_ahead_of_time():
    assert plan_acceleration("cuda", SpeedSettings(compile=True)).compile == "jit"
    zero = plan_acceleration("cuda", SpeedSettings(compile=True, offload=True), zero_gpu=True)
    assert zero.compile == "aot" and not zero.offload and "ZeroGPU" in zero.notes[0]
    plain = plan_acceleration("cuda", SpeedSettings())
    assert (plain.offload, plain.compile, plain.fuse_loras, plain.sdxl_vae) == (False, None, False, FP16_FIX_VAE)


def test_offload_wins_over_compile_and_compile_over_fusing():
    offloaded = plan_acceleration("cuda:0", SpeedSettings(offload=True, compile=True))
    assert offloaded.offload and offloaded.compile is None and "offload" in offloaded.notes[0]
    compiled = plan_acceleration("cuda", SpeedSettings(compile=True, fuse_loras=True))
    assert compiled.compile == "jit" and not compiled.fuse_loras and "slot" in compiled.notes[0]


def test_only_sdxl_in_fp16_with_an_upcasting_vae_wants_the_fp16_fix():
    assert wants_fp16_fix_vae("sdxl", torch.float16, {"force_upcast": True})
    assert not wants_fp16_fix_vae("sdxl", torch.float16, {"force_upcast": False})  # already a fixed VAE
    assert not wants_fp16_fix_vae("sdxl", torch.float32, {"force_upcast": True})
    assert not wants_fp16_fix_vae("sd15", torch.float16, {"force_upcast": True})


def test_the_fp16_fix_vae_unreachable_gives_a_plain_message():
    vae, note = load_fp16_fix_vae("someone/not-cached-vae", "cpu", torch.float32)
    assert vae is None and "not-cached-vae" in note and "fp32" in note and "STUDIO_SDXL_VAE" in note


@pytest.mark.parametrize(
    ("device", "size", "images", "expected"),
    [
        ("cuda", 1024, 1, (False, False)),  # SDXL's native size
        ("cuda", 1536, 1, (False, False)),
        ("cuda", 1544, 1, (True, False)),  # above 1.5x the native side: tiles
        ("cuda", 1024, 2, (False, False)),
        ("cuda", 1024, 3, (False, True)),  # more than two native images: one at a time
        ("cpu", 2048, 4, (False, False)),  # never on the CPU: the exact pixels matter more there
    ],
)
def test_vae_tiles_and_slices_only_above_a_size_on_cuda(device, size, images, expected):
    assert vae_savers(device, size, size, images, resolution=1024) == expected


@pytest.mark.parametrize(("size", "tiling"), [(104, False), (128, False), (768, False), (776, True)])
def test_a_small_models_vae_tiles_only_above_an_absolute_floor(size, tiling):
    """The embedded model (native 64 px) on CUDA tiled above 96 px into its own 64 px tiles: seams, nothing saved."""
    assert vae_savers("cuda", size, size, 1, resolution=64)[0] is tiling


# ------------------------------------------------------------------ LoRAs in a compiled UNet's slot, and fusing


@pytest.fixture
def lora_folder(tiny_sd_dir, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    for seed, rank in ((1, 4), (2, 8)):
        tensors = lora_tensors(pipe, layout="kohya", rank=rank, seed=seed, strength=0.5)
        # Alphas other than the rank, so each LoRA's scale (alpha / rank) matters.
        tensors.update({key: torch.tensor(rank / 2.0) for key in tensors if key.endswith(".alpha")})
        write_lora(tmp_path / f"style{seed}.safetensors", tensors, kohya_metadata())
    write_lora(tmp_path / "peft.safetensors", lora_tensors(pipe, layout="peft", rank=4, seed=3), kohya_metadata())
    return tmp_path


def fresh_pipe(tiny_sd_dir) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe("a red circle", num_inference_steps=2, generator=generator, output_type="latent").images


SETS = [
    [],
    [LoraChoice("style1.safetensors", 0.8)],
    [LoraChoice("style1.safetensors", 0.5), LoraChoice("style2.safetensors", 1.2)],
    [LoraChoice("peft.safetensors", 1.0)],
    [],
]


def test_loras_in_the_slot_make_the_images_adapters_make(tiny_sd_dir, lora_folder):
    eager_pipe, slot_pipe = fresh_pipe(tiny_sd_dir), fresh_pipe(tiny_sd_dir)
    eager = LoraManager(eager_pipe, "sd15", lora_folder)
    slotted = LoraManager(slot_pipe, "sd15", lora_folder, slot_rank=16)
    base = latents(slot_pipe)
    for choices in SETS:
        eager.activate(choices)
        slotted.activate(choices)
        expected, got = latents(eager_pipe), latents(slot_pipe)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        if not choices:
            assert torch.equal(got, base)  # the empty slot adds exactly zero
    assert not slot_pipe.unet.peft_config.keys() - {"studio_slot"}  # LoRAs never became UNet adapters


def test_a_lora_switch_in_a_compiled_unet_never_recompiles(tiny_sd_dir, lora_folder):
    pipe = fresh_pipe(tiny_sd_dir)
    manager = LoraManager(pipe, "sd15", lora_folder, slot_rank=16)
    torch._dynamo.reset()
    pipe.unet.compile(backend="eager")  # dynamo's guards decide recompilation, whichever backend runs the graph
    manager.activate(SETS[1])
    latents(pipe)  # compiles once
    with torch._dynamo.config.patch(error_on_recompile=True):
        for choices in SETS[2:]:
            manager.activate(choices)
            latents(pipe)
    torch._dynamo.reset()


def test_the_slot_refuses_loras_wider_than_its_rank(tiny_sd_dir, lora_folder):
    manager = LoraManager(fresh_pipe(tiny_sd_dir), "sd15", lora_folder, slot_rank=10)
    manager.activate([LoraChoice("style2.safetensors", 1.0)])  # rank 8 fits
    with pytest.raises(Exception, match="add up to rank 10"):
        manager.activate([LoraChoice("style1.safetensors", 1.0), LoraChoice("style2.safetensors", 1.0)])


def test_a_set_is_fused_when_made_active_and_the_base_comes_back_exactly(tiny_sd_dir, lora_folder):
    pipe = fresh_pipe(tiny_sd_dir)
    manager = LoraManager(pipe, "sd15", lora_folder)
    base = latents(pipe)
    unfused = []
    for choices in SETS[1:4]:
        manager.activate(choices)
        unfused.append(latents(pipe))
    manager.activate([])
    weights = {name: value.clone() for name, value in pipe.unet.state_dict().items() if "lora_" not in name}
    manager.fuse = True
    for choices, expected in zip(SETS[1:4], unfused, strict=True):  # one set after another, each fused at once
        manager.activate(choices)
        assert manager._fused_set is not None
        torch.testing.assert_close(latents(pipe), expected, rtol=1e-3, atol=1e-4)
    manager.activate([])
    assert manager._fused_set is None and torch.equal(latents(pipe), base)
    restored = {name: value for name, value in pipe.unet.state_dict().items() if "lora_" not in name}
    assert all(torch.equal(restored[name], weights[name]) for name in weights)


def test_switches_read_from_the_environment_and_flags_turn_them_on():
    from pipelines.errors import StudioError
    from pipelines.settings import Settings

    speed = Settings.from_env({"STUDIO_COMPILE": "1", "STUDIO_SDXL_VAE": "none", "STUDIO_FUSE_LORAS": "true"}).speed
    assert (speed.compile, speed.fuse_loras, speed.offload, speed.sdxl_vae) == (True, True, False, None)
    assert Settings.from_env({}).speed.fuse_loras is None  # the device decides
    assert Settings.from_env({"STUDIO_FUSE_LORAS": "0"}).speed.fuse_loras is False
    assert Settings.from_env({}).with_flags(offload=True).speed.offload
    with pytest.raises(StudioError, match="STUDIO_OFFLOAD must be 1 or 0"):
        Settings.from_env({"STUDIO_OFFLOAD": "maybe"})


def test_zerogpu_runs_the_ahead_of_time_graph_only_for_the_call_it_was_exported_from(tiny_sd_dir):
    from pipelines.gpu import AheadOfTimeForward, call_signature

    unet = fresh_pipe(tiny_sd_dir).unet
    sample, states = torch.zeros(2, 4, 16, 16), torch.zeros(2, 77, 32)
    exported = ((sample, 5), {"encoder_hidden_states": states, "return_dict": False})
    lora = {"active": False}
    forward = AheadOfTimeForward(unet, lambda *a, **k: "compiled", call_signature(*exported), lambda: lora["active"])
    unet.forward = forward
    assert unet(sample, 5, encoder_hidden_states=states, return_dict=False) == "compiled"
    assert unet(sample, 7, encoder_hidden_states=states, return_dict=False, cross_attention_kwargs=None) == "compiled"
    other_size = torch.zeros(2, 4, 8, 8)
    assert unet(other_size, 5, encoder_hidden_states=states, return_dict=False)[0].shape == other_size.shape
    residuals = [torch.zeros(2, 32, 16, 16)]
    assert forward.fits(exported[0], exported[1]) and not forward.fits(
        exported[0], {**exported[1], "down_block_additional_residuals": residuals})
    lora["active"] = True  # the exported graph holds the base weights only
    assert unet(sample, 5, encoder_hidden_states=states, return_dict=False)[0].shape == sample.shape


class FakePipe:
    def __init__(self) -> None:
        self.offloaded_to: list[str] = []
        self.moved_to: list[str] = []

    def enable_model_cpu_offload(self, device: str) -> None:
        self.offloaded_to.append(device)

    def to(self, device: str) -> None:
        self.moved_to.append(device)


def test_offload_installs_hooks_instead_of_moving_and_again_only_when_the_pipeline_changes():
    from pipelines.acceleration import Offloader, place

    offloaded, moved = FakePipe(), FakePipe()
    place(offloaded, "cuda", offload=True)
    place(moved, "cuda", offload=False)
    assert (offloaded.offloaded_to, offloaded.moved_to, moved.moved_to) == (["cuda"], [], ["cuda"])
    offloader, text, edge = Offloader("cuda"), FakePipe(), FakePipe()
    for pipe in (text, text, edge, edge, text):
        offloader.before_run(pipe)
    assert (len(text.offloaded_to), len(edge.offloaded_to)) == (2, 1)  # diffusers re-applies them after each call


def test_the_accelerator_sets_the_vaes_tiling_and_slicing_per_request(tiny_sd_dir):
    from pipelines.acceleration import Acceleration, Accelerator

    pipe = fresh_pipe(tiny_sd_dir)
    accelerator = Accelerator(Acceleration(), "cuda", pipe, resolution=32)  # decisions as on a GPU; nothing runs
    accelerator.before_run(pipe, 800, 800, 1)  # above the floor of 768 px that every model decodes whole
    assert pipe.vae.use_tiling and not pipe.vae.use_slicing
    accelerator.before_run(pipe, 32, 32, 4)
    assert not pipe.vae.use_tiling and pipe.vae.use_slicing
    Accelerator(Acceleration(), "cpu", pipe, resolution=32).before_run(pipe, 64, 64, 4)
    assert not pipe.vae.use_tiling and not pipe.vae.use_slicing


def test_served_models_are_frozen_so_the_first_lora_changes_no_rounding(tiny_sd_dir):
    """peft freezes base weights when a LoRA loads, and on the CPU a bf16 Linear rounds differently when its weight
    requires grad: the loader freezes everything up front, so the base image never changes with the first LoRA."""
    from pipelines.loader import load_base_pipeline

    pipe, _ = load_base_pipeline(str(tiny_sd_dir), "cpu", torch.float32)
    modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    assert modules and not any(parameter.requires_grad for module in modules for parameter in module.parameters())


def test_switches_skip_re_enabling_lora_layers_yet_every_set_applies_exactly(tiny_sd_dir, lora_folder):
    """The manager enables the LoRA layers only when they may be off (enabling walks every layer: about 40% of a
    switch); a LoRA loaded while they are off still applies, and each set gives the same latents every time."""
    pipe = fresh_pipe(tiny_sd_dir)
    manager = LoraManager(pipe, "sd15", lora_folder)
    base = latents(pipe)
    manager.activate(SETS[1])
    first = latents(pipe)
    manager.activate([])
    assert torch.equal(latents(pipe), base)
    manager.activate(SETS[3])  # a new LoRA, loaded while the layers are off
    assert not torch.equal(latents(pipe), base)
    manager.activate(SETS[2])
    manager.activate(SETS[1])
    assert torch.equal(latents(pipe), first)
    manager.activate([])
    assert torch.equal(latents(pipe), base)
