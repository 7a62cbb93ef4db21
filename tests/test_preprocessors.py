"""Preprocessors on real photos; detector paths covered by random-weight files of the right architecture.

Nothing here reaches the Hub: the OpenPose and MiDaS files are generated under their Annotators names in a
temporary folder (never commit them), Depth Anything is a tiny random model saved with save_pretrained.
The device tests at the end stand in for a GPU with the meta device (see there).
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from pipelines.errors import StudioError  # noqa: E402
from pipelines.modes import MODES  # noqa: E402
from pipelines.parameters import PARAMETERS  # noqa: E402
from pipelines.preprocessors import PREPROCESSORS, clear_detector_cache, depth, make_control_map, pose  # noqa: E402
from pipelines.preprocessors.weights import DetectorSources, cached_detector, import_controlnet_aux  # noqa: E402

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def control_map(preprocessor, image, size, sources=None, **options):
    """`make_control_map` with every option at its declared default unless given."""
    values = {name: PARAMETERS[name].default for spec in PREPROCESSORS.values() for name in spec.options}
    return make_control_map(preprocessor, image, size, {**values, **options}, sources)


@pytest.fixture(autouse=True)
def fresh_detectors(monkeypatch, tmp_path):
    # An empty hub cache, so "missing weights" does not depend on what this machine has downloaded.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    clear_detector_cache()
    yield
    clear_detector_cache()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def assert_grey(pixels: np.ndarray) -> None:
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])


def random_state_dict_like(
    model: torch.nn.Module, drop_first_name: bool = False, scale: float = 0.05
) -> dict[str, torch.Tensor]:
    """Random half-precision tensors with the keys and shapes of a model built on the meta device (no slow init).

    controlnet-aux's OpenPose files name layers without their block prefix (`drop_first_name`). OpenPose gets
    scale 0: random heatmaps full of peaks send its Python-level limb matching into minutes of work.
    """
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        key = key.split(".", 1)[1] if drop_first_name else key
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith(("running_var", "norm.weight")) or (value.ndim == 1 and key.endswith("weight")):
            state[key] = torch.ones(value.shape, dtype=torch.float16)
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.zeros(value.shape, dtype=torch.float16)
        else:
            state[key] = (torch.randn(value.shape, generator=generator) * scale).half()
    return state


@pytest.fixture(scope="module")
def annotators(tmp_path_factory):
    """A folder like lllyasviel/Annotators holding random-weight OpenPose and MiDaS files."""
    folder = tmp_path_factory.mktemp("annotators")
    open_pose = import_controlnet_aux("open_pose")
    dpt_depth = import_controlnet_aux("midas.midas.dpt_depth")
    with torch.device("meta"):
        body, hand, face = open_pose.body.bodypose_model(), open_pose.hand.handpose_model(), open_pose.face.FaceNet()
        midas = dpt_depth.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    torch.save(random_state_dict_like(body, drop_first_name=True, scale=0), folder / "body_pose_model.pth")
    torch.save(random_state_dict_like(hand, drop_first_name=True, scale=0), folder / "hand_pose_model.pth")
    torch.save(random_state_dict_like(face, scale=0), folder / "facenet.pth")
    torch.save(random_state_dict_like(midas), folder / "dpt_hybrid-midas-501f0c75.pt")
    return folder


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    folder = tmp_path_factory.mktemp("depth-anything")
    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=14,
        image_size=56,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # The same processor settings as depth-anything/Depth-Anything-V2-Small-hf.
    DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def test_every_control_mode_offers_none_and_declared_preprocessors():
    for mode in MODES.values():
        if mode.is_controlled:
            assert "none" in mode.preprocessors and len(set(mode.preprocessors)) == len(mode.preprocessors)
            assert set(mode.preprocessors) <= set(PREPROCESSORS)
    assert MODES["edge"].preprocessors[0] == "canny" and MODES["pose"].preprocessors[0] == "openpose"
    for spec in PREPROCESSORS.values():
        assert set(spec.options) <= set(PARAMETERS)


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize(("size", "detect_resolution"), [((512, 512), 256), ((320, 480), 1024), ((768, 256), 64)])
def test_canny_map_is_binary_and_exactly_the_requested_size(name, size, detect_resolution):
    photo = Image.fromarray(PHOTOS[name]())
    options = dict(detect_resolution=detect_resolution)
    edges = as_array(control_map("canny", photo, size, **options))
    assert edges.shape == (size[1], size[0], 3)
    assert set(np.unique(edges)) == {0, 255}
    assert_grey(edges)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_higher_canny_thresholds_give_fewer_edges(name):
    photo = Image.fromarray(PHOTOS[name]())
    maps = [
        as_array(control_map("canny", photo, (512, 512), low_threshold=low, high_threshold=high))
        for low, high in [(20, 60), (100, 200), (200, 255)]
    ]
    counts = [int((edges[..., 0] > 0).sum()) for edges in maps]
    assert counts[0] > counts[1] > counts[2] > 0


def test_detection_resolution_changes_detail_not_size(astronaut):
    coarse, fine = (
        as_array(control_map("canny", astronaut, (400, 400), detect_resolution=r))
        for r in (128, 1024)
    )
    assert coarse.shape == fine.shape == (400, 400, 3)
    assert not np.array_equal(coarse, fine)


def test_none_uses_the_upload_as_a_ready_map_cropped_to_the_aspect_ratio():
    thirds = np.zeros((100, 300, 3), dtype=np.uint8)
    thirds[:, :100] = (255, 0, 0)
    thirds[:, 100:200] = (0, 255, 0)
    thirds[:, 200:] = (0, 0, 255)
    ready = control_map("none", Image.fromarray(thirds), (48, 48))
    assert ready.size == (48, 48) and ready.mode == "RGB"
    assert np.all(np.asarray(ready) == (0, 255, 0))


@pytest.mark.parametrize(
    ("mode", "preprocessor", "options", "filename"),
    [
        ("pose", "openpose", dict(), "body_pose_model.pth"),
        ("depth", "midas", dict(), "dpt_hybrid-midas-501f0c75.pt"),
    ],
)
def test_missing_annotator_weights_offline_name_the_file(astronaut, mode, preprocessor, options, filename):
    with pytest.raises(StudioError) as error:
        control_map(preprocessor, astronaut, (64, 64), **options)
    message = str(error.value)
    assert filename in message and "lllyasviel/Annotators" in message
    assert f'upload a ready {mode} map and choose the preprocessor "none"' in message


def test_missing_file_in_local_annotators_folder(astronaut, tmp_path, monkeypatch):
    sources = DetectorSources(annotators=str(tmp_path))
    with pytest.raises(StudioError, match="body_pose_model.pth is not in the STUDIO_ANNOTATORS folder") as refused:
        control_map("openpose", astronaut, (64, 64), sources)
    assert str(tmp_path) not in str(refused.value)  # no server path reaches a person


def test_hands_need_their_own_file(astronaut, annotators, tmp_path, monkeypatch):
    (tmp_path / "body_pose_model.pth").symlink_to(annotators / "body_pose_model.pth")
    sources = DetectorSources(annotators=str(tmp_path))
    with pytest.raises(StudioError, match="OpenPose hand weights .*hand_pose_model.pth"):
        control_map("openpose", astronaut, (64, 64), sources, include_hands=True)


class NotWeights:
    pass


@pytest.mark.parametrize("content", ["garbage", "pickled object"])
def test_damaged_or_unsafe_weight_files_are_refused(astronaut, tmp_path, monkeypatch, content):
    path = tmp_path / "body_pose_model.pth"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        # An arbitrary object must not be unpickled: torch.load's weights_only default refuses it.
        torch.save({"model": NotWeights()}, path)
    sources = DetectorSources(annotators=str(tmp_path))
    with pytest.raises(StudioError, match="body_pose_model.pth could not be loaded"):
        control_map("openpose", astronaut, (64, 64), sources)


PARTS = [("body", pose.BODY_FILE, "Body"), ("hand", pose.HAND_FILE, "Hand"), ("face", pose.FACE_FILE, "Face")]


def test_openpose_with_random_weights_loads_once_and_sizes_exactly(astronaut, annotators, tmp_path, monkeypatch):
    folder = tmp_path / "annotators"
    folder.mkdir()
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        (folder / name).symlink_to(annotators / name)
    sources = DetectorSources(annotators=str(folder))
    options = dict(include_hands=True, include_face=True, detect_resolution=256)
    skeleton = as_array(control_map("openpose", astronaut, (384, 256), sources, **options))
    assert skeleton.shape == (256, 384, 3)
    # Detectors are cached per source: with the files gone, the same parts come back without loading.
    parts = [pose._part(*part, sources) for part in PARTS]
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        (folder / name).unlink()
    assert [pose._part(*part, sources) for part in PARTS] == parts


def test_midas_with_random_weights_gives_a_grey_map_of_the_requested_size(annotators, monkeypatch):
    sources = DetectorSources(annotators=str(annotators))
    coffee = Image.fromarray(data.coffee())
    depth = as_array(control_map("midas", coffee, (300, 200), sources, detect_resolution=64))
    assert depth.shape == (200, 300, 3)
    assert_grey(depth)


def test_depth_anything_map_is_grey_full_range_and_exactly_sized(tiny_depth_anything, monkeypatch):
    sources = DetectorSources(depth_model=str(tiny_depth_anything))
    chelsea = Image.fromarray(data.chelsea())
    for size, resolution in [((320, 240), 64), ((256, 512), 518)]:
        options = dict(detect_resolution=resolution)
        depth = as_array(control_map("depth_anything", chelsea, size, sources, **options))
        assert depth.shape == (size[1], size[0], 3)
        assert_grey(depth)
        assert depth.min() == 0 and depth.max() == 255


def test_depth_anything_keeps_near_bright(tiny_depth_anything):
    """The model predicts inverse depth (bigger = nearer); the map must rise with it, not be inverted."""
    from pipelines.preprocessors.depth import depth_anything_map
    from pipelines.preprocessors.weights import cached_detector

    chelsea = Image.fromarray(data.chelsea())
    sources = DetectorSources(depth_model=str(tiny_depth_anything))
    grey = as_array(depth_anything_map(chelsea, (451, 300), detect_resolution=140, sources=sources))
    estimator = cached_detector("depth_anything", str(tiny_depth_anything), "cpu", lambda: None)
    inputs = estimator.image_processor(images=chelsea, size={"height": 140, "width": 140}, return_tensors="pt")
    with torch.inference_mode():
        predicted = estimator.model(**inputs).predicted_depth
    raw = torch.nn.functional.interpolate(predicted[:, None], size=(300, 451), mode="bicubic")[0, 0].numpy()
    assert np.corrcoef(grey[..., 0].ravel(), raw.ravel())[0, 1] > 0.99


def test_missing_depth_anything_model_offline(astronaut, tmp_path, monkeypatch):
    with pytest.raises(StudioError, match="depth-anything/Depth-Anything-V2-Small-hf .*STUDIO_DEPTH_MODEL"):
        control_map("depth_anything", astronaut, (64, 64))
    sources = DetectorSources(depth_model=str(tmp_path))
    with pytest.raises(StudioError, match="STUDIO_DEPTH_MODEL model could not be loaded.*model.safetensors") as refused:
        control_map("depth_anything", astronaut, (64, 64), sources)
    assert str(tmp_path) not in str(refused.value)


# Devices. There is no GPU here, so two stand-ins play one. Weights on the "meta" device refuse CPU inputs as CUDA
# weights do ("Tensor on device cpu is not on the expected device meta!"), and `run_as_on_accelerator` swaps a
# model's (meta, dataless) results for AcceleratorTensors, which numpy refuses, as it refuses CUDA tensors, until
# they are brought back with .cpu(). A detector that gives a map under both moved its inputs and its results.


class AcceleratorTensor(torch.Tensor):
    """Values that act as if they lived on an accelerator: numpy refuses them until `.cpu()` or `.to("cpu")`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert an accelerator tensor to numpy; use Tensor.cpu() to copy it first")
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _names_the_cpu(args[1:], kwargs)):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def _names_the_cpu(args: tuple, kwargs: dict) -> bool:
    targets = [*args, kwargs.get("device")]
    return any(torch.device(t).type == "cpu" for t in targets if isinstance(t, (str, torch.device)))


def ramp(shape: torch.Size) -> torch.Tensor:
    """Finite values spanning a range, so a depth map made of them is full-range."""
    return torch.linspace(0.0, 1.0, shape.numel()).reshape(shape)


def run_as_on_accelerator(model: torch.nn.Module, values: Callable[[torch.Size], torch.Tensor]) -> list[str]:
    """Hook `model` so each tensor it returns becomes an AcceleratorTensor of `values(shape)`.

    Returns the list that the devices of its tensor inputs are recorded in, call after call.
    """
    seen: list[str] = []

    def record_inputs(_module, args, kwargs):
        seen.extend(str(value.device) for value in [*args, *kwargs.values()] if isinstance(value, torch.Tensor))

    def swap(result):
        if isinstance(result, torch.Tensor):
            return values(result.shape).as_subclass(AcceleratorTensor)
        if isinstance(result, dict):  # a transformers ModelOutput
            for key in list(result):
                result[key] = swap(result[key])
            return result
        if isinstance(result, (list, tuple)):
            return type(result)(swap(item) for item in result)
        return result

    model.register_forward_pre_hook(record_inputs, with_kwargs=True)
    model.register_forward_hook(lambda _module, _args, result: swap(result))
    return seen


def devices_of(model: torch.nn.Module) -> set[str]:
    return {str(parameter.device) for parameter in model.parameters()}


def test_depth_anything_stays_off_an_accelerator_it_was_not_given(tiny_depth_anything, monkeypatch):
    """The issue: given no device, a transformers 5 pipeline moves its model to cuda:0 whenever CUDA is there,
    while the studio's inputs stay on the CPU. Here CUDA is reported present; the detector must stay on the
    device its sources name (the CPU by default)."""
    monkeypatch.setattr("transformers.pipelines.base.is_torch_cuda_available", lambda: True)
    sources = DetectorSources(depth_model=str(tiny_depth_anything))
    chelsea = Image.fromarray(data.chelsea())
    grey = as_array(control_map("depth_anything", chelsea, (64, 48), sources, detect_resolution=56))
    assert grey.shape == (48, 64, 3)
    estimator = cached_detector("depth_anything", sources.depth_model, "cpu", lambda: None)
    assert estimator.model.device == torch.device("cpu")


def test_depth_anything_runs_on_the_sources_device(tiny_depth_anything):
    sources = DetectorSources(depth_model=str(tiny_depth_anything), device="meta")
    estimator = cached_detector(
        "depth_anything", sources.depth_model, "meta", lambda: depth._load_depth_pipeline(sources.depth_model, "meta")
    )
    inputs_seen = run_as_on_accelerator(estimator.model, ramp)
    chelsea = Image.fromarray(data.chelsea())
    grey = as_array(control_map("depth_anything", chelsea, (64, 48), sources, detect_resolution=56))
    assert devices_of(estimator.model) == {"meta"} and estimator.model.dtype == torch.float32
    assert inputs_seen and set(inputs_seen) == {"meta"}
    assert grey.shape == (48, 64, 3) and grey.min() == 0 and grey.max() == 255
    assert_grey(grey)


def test_openpose_parts_run_on_the_sources_device(astronaut, annotators):
    sources = DetectorSources(annotators=str(annotators), device="meta")
    parts = {name: pose._part(name, filename, class_name, sources) for name, filename, class_name in PARTS}
    inputs_seen = {name: run_as_on_accelerator(part.model, torch.zeros) for name, part in parts.items()}
    options = dict(include_hands=True, include_face=True, detect_resolution=64)
    skeleton = as_array(control_map("openpose", astronaut, (96, 64), sources, **options))
    assert skeleton.shape == (64, 96, 3)
    # Zero heat maps hold no body, so no hand or face is looked for in the map: call those parts on a crop.
    crop = np.asarray(astronaut)[:64, :64]
    parts["hand"](crop)
    parts["face"](crop)
    for name, part in parts.items():
        assert devices_of(part.model) == {"meta"}, name
        assert inputs_seen[name] and set(inputs_seen[name]) == {"meta"}, name


def test_midas_runs_on_the_sources_device(annotators):
    sources = DetectorSources(annotators=str(annotators), device="meta")
    detector = cached_detector("midas", sources.annotators_label, "meta", lambda: depth._load_midas(sources))
    inputs_seen = run_as_on_accelerator(detector.model, ramp)
    coffee = Image.fromarray(data.coffee())
    grey = as_array(control_map("midas", coffee, (96, 64), sources, detect_resolution=64))
    assert devices_of(detector.model) == {"meta"}
    assert inputs_seen and set(inputs_seen) == {"meta"}
    assert grey.shape == (64, 96, 3) and grey.max() > grey.min()
    assert_grey(grey)


def test_detectors_are_cached_per_device(annotators):
    """A detector loaded for one device is never handed to a caller that runs on another."""
    on_cpu, on_meta = (
        pose._part("body", pose.BODY_FILE, "Body", DetectorSources(annotators=str(annotators), device=device))
        for device in ("cpu", "meta")
    )
    assert devices_of(on_cpu.model) == {"cpu"} and devices_of(on_meta.model) == {"meta"}
