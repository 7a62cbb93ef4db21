"""The studio on Ray Serve (serving/) on a real local cluster: two Generator replicas of the embedded model behind the
token-checking ingress. A request gives the in-process pixels, and so do a LoRA grid, a timeline's frames and a
run's previews through `RemoteStudio`; Stop ends a remote run and frees its replica; a LoRA set stays on its replica
and a replica's least recent set goes when a third comes; a missing or wrong token, a full queue and a killed replica
each end as a person can read. The wire format and the Serve config are checked first, without a cluster."""

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from ray.serve.schema import ServeDeploySchema
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.errors import StudioError
from pipelines.explore.sweeps import run_sweep
from pipelines.explore.timeline import run_timeline
from pipelines.grid import render_grid
from pipelines.metadata import tag_with_parameters
from pipelines.previews import Previewer
from pipelines.request import (
    ControlUnit,
    GenerationRequest,
    GenerationResult,
    GridRequest,
    LoraChoice,
    SweepRequest,
    TimelineRequest,
    XYRequest,
)
from pipelines.settings import EMBEDDED_LORAS, PROJECT_ROOT, Settings
from pipelines.studio import Studio
from pipelines.xy import render_xy
from serving.app import StudioAppArgs
from serving.client import STOPPED, RemoteStudio
from serving.local import local_cluster
from serving.wire import (
    PICTURE_FIELDS,
    call_to_wire,
    lora_set_id,
    lora_set_names,
    request_from_wire,
    request_to_wire,
    result_from_wire,
    result_to_wire,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKEN = "a-test-token"
BATCH_SIZE = 2  # text requests a replica may run in one pipeline call
# Requests waiting for a Generator replica before the studio answers that it is busy. Serve counts a request as
# waiting until its router has picked a replica, so a burst of more than this many can meet a 503 even with replicas
# free: it is no smaller than the bursts the tests send but the one meant to fill the queue.
QUEUE_LIMIT = 4
MAX_BODY_MB = 1  # the ingress reads at most this much of a body: small here, so the test can pass it
EDGE_MAP = PROJECT_ROOT / "examples" / "embedded" / "edge_1_map.png"
# Five LoRAs of their own content (the embedded two and scaled copies), one per set: each set is its own adapter.
LORAS = {"stripes": ("stripes", 1.0), "mono": ("mono", 1.0), "faint-stripes": ("stripes", 0.5),
         "faint-mono": ("mono", 0.5), "strong-stripes": ("stripes", 1.5)}


def text_request(**changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red circle on a blue background", "steps": 2, "seed": 5, **changes})


def as_run(request: GenerationRequest) -> dict[str, object]:
    """A request's settings; its pictures are the ones the caller sent."""
    return {item.name: getattr(request, item.name) for item in fields(request) if item.name not in PICTURE_FIELDS}


def same_pixels(one: GenerationResult, other: GenerationResult) -> bool:
    return len(one.images) == len(other.images) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one.images, other.images))


# ------------------------------------------------------------------ without a cluster


def test_a_request_crosses_as_json_with_its_files_and_comes_back_the_same(tmp_path):
    mask = Image.new("L", (64, 64), 0)
    request = GenerationRequest(
        mode="edge", prompt="a square", image=str(EDGE_MAP), mask=mask, loras=(LoraChoice("stripes", 0.8, "out"),),
        control_units=(ControlUnit("depth", str(EDGE_MAP), scale=0.5),), steps=3,
    )
    back = request_from_wire(json.loads(json.dumps(request_to_wire(request))), tmp_path)
    for name in {item.name for item in fields(GenerationRequest)} - set(PICTURE_FIELDS):
        assert getattr(back, name) == getattr(request, name), name
    assert Path(back.image).name == EDGE_MAP.name and Path(back.image).read_bytes() == EDGE_MAP.read_bytes()
    assert np.array_equal(np.asarray(Image.open(back.mask)), np.asarray(mask))
    unit = back.control_units[0]
    assert (unit["mode"], unit["scale"]) == ("depth", 0.5)
    assert Path(unit["image"]).read_bytes() == EDGE_MAP.read_bytes()


def test_a_style_image_crosses_as_its_file_and_its_scale_and_mode_as_sent(tmp_path):
    assert "style_image" in PICTURE_FIELDS  # a picture field, as its declared kind says
    sent = GenerationRequest(prompt="a circle", style_image=str(EDGE_MAP), style_scale=0.7,
                             style_mode='{"up":{"block_0":[0.0,1.0]}}')
    wire = json.loads(json.dumps(request_to_wire(sent)))
    back = request_from_wire(wire, tmp_path)
    assert Path(back.style_image).read_bytes() == EDGE_MAP.read_bytes()
    assert (back.style_scale, back.style_mode) == (0.7, sent.style_mode)
    assert "style_image" not in request_to_wire(sent, pictures=False)
    in_memory = request_from_wire(json.loads(json.dumps(request_to_wire(replace(sent, style_image=Image.new(
        "RGB", (8, 8), (9, 8, 7)))))), tmp_path)
    assert Image.open(in_memory.style_image).getpixel((0, 0)) == (9, 8, 7)


def test_a_result_crosses_with_each_images_parameters():
    image = tag_with_parameters(Image.new("RGB", (8, 8), (200, 10, 30)), "a square\nSteps: 3, Seed: 9")
    sent = GenerationRequest(prompt="a square", image=str(EDGE_MAP), steps=3)
    result = GenerationResult([image], [9], ["a square\nSteps: 3, Seed: 9"], replace(sent, seed=9), None, ["a note"])
    back = result_from_wire(json.loads(json.dumps(result_to_wire(result))), sent)
    assert np.array_equal(np.asarray(back.images[0]), np.asarray(image))
    assert back.images[0].info["parameters"] == "a square\nSteps: 3, Seed: 9"
    assert (back.seeds, back.notes, back.request) == ([9], ["a note"], replace(sent, seed=9))


def test_a_lora_sets_id_is_canonical_and_names_its_loras():
    text = lora_set_id("stripes:0.8, mono:1")
    assert text == lora_set_id((LoraChoice("mono", 1.0), LoraChoice("stripes", 0.8)))
    assert text == lora_set_id("mono:0.5, stripes:0.8, mono:0.5")  # named twice: one LoRA, weights added
    assert text != lora_set_id("stripes:0.7, mono:1")
    assert text != lora_set_id("stripes:0.8@out, mono:1")  # block weights make another set
    assert lora_set_names(lora_set_id("stripes:0.8@out")) == ["stripes"]
    assert lora_set_names(text) == ["mono", "stripes"]
    assert lora_set_id("") == lora_set_id(()) == ""
    with pytest.raises(StudioError, match="LoRAs"):
        lora_set_id("stripes:heavy")


@pytest.mark.parametrize(
    ("wire", "words"),
    [({"prompt": "x", "colour": "red"}, "does not know: colour"),
     ({"image": {"name": "map.png", "data": "not base64!"}}, "Image: the data of 'map.png' is not base64"),
     ({"image": "/etc/passwd"}, "Image must be sent as an object like"),
     ({"loras": [{"file": "stripes"}]}, "LoRAs: each LoRA must be an object"),
     (["prompt"], "must be a JSON object")],
)
def test_a_bad_request_on_the_wire_is_refused_naming_the_field(wire, words, tmp_path):
    with pytest.raises(StudioError, match=words):
        request_from_wire(wire, tmp_path)


def serve_configs() -> dict[str, dict]:
    """serving/config.yaml, and the Serve config inside the KubeRay manifest."""
    manifest = yaml.safe_load((PROJECT_ROOT / "serving" / "rayservice.yaml").read_text())
    return {"config.yaml": yaml.safe_load((PROJECT_ROOT / "serving" / "config.yaml").read_text()),
            "rayservice.yaml": yaml.safe_load(manifest["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("name", ["config.yaml", "rayservice.yaml"])
def test_each_serve_config_is_valid_and_never_scales_to_zero(name):
    config = ServeDeploySchema.model_validate(serve_configs()[name])
    for application in config.applications:
        assert application.import_path == "serving.app:build_app"
        args = StudioAppArgs.model_validate(application.args)
        generator = {deployment.name: deployment for deployment in application.deployments}["Generator"]
        # A replica takes in the requests that may share a call and one more, which waits there for the call to end.
        assert generator.max_ongoing_requests == args.batch_size + 1
        assert generator.autoscaling_config["min_replicas"] >= 1
        assert generator.autoscaling_config["upscale_delay_s"] <= 10
    with pytest.raises(ValueError, match="lora_sets_per_replica"):
        StudioAppArgs.model_validate({"lora_sets_per_replica": 0})


def test_the_kuberay_manifest_runs_replicas_on_gpus_and_takes_the_token_from_a_secret():
    manifest = yaml.safe_load((PROJECT_ROOT / "serving" / "rayservice.yaml").read_text())
    (application,) = serve_configs()["rayservice.yaml"]["applications"]
    generator = next(item for item in application["deployments"] if item["name"] == "Generator")
    assert generator["ray_actor_options"]["num_gpus"] == 1
    (workers,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (token,) = [item for item in container["env"] if item["name"] == "STUDIO_BACKEND_TOKEN"]
    assert "secretKeyRef" in token["valueFrom"]  # never the value itself in the manifest


# ------------------------------------------------------------------ on a local cluster


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serving-loras")
    for name, (source, scale) in LORAS.items():
        with safe_open(EMBEDDED_LORAS / f"{source}.safetensors", "pt") as file:
            tensors = {key: file.get_tensor(key) * (scale if "lora_B" in key else 1.0) for key in file.keys()}
            save_file(tensors, folder / f"{name}.safetensors", metadata=file.metadata())
    return folder


@pytest.fixture(scope="module")
def local_studio(lora_dir) -> Studio:
    """The in-process studio every remote result is compared with."""
    return Studio(Settings(lora_dir=str(lora_dir), device="cpu", threads=1))


@pytest.fixture(scope="module")
def url(lora_dir):
    """The application on a local cluster of two CPUs: two Generators of the embedded model, each running up to
    BATCH_SIZE text requests together, the ingress in front."""
    environment = {"STUDIO_BACKEND_TOKEN": TOKEN, "STUDIO_LORA_DIR": str(lora_dir), "STUDIO_DEVICE": "cpu",
                   "STUDIO_THREADS": "1"}
    with local_cluster(environment, replicas=2, queue_limit=QUEUE_LIMIT, max_body_mb=MAX_BODY_MB,
                       batch_size=BATCH_SIZE) as cluster_url:
        yield cluster_url


@pytest.fixture(scope="module")
def remote(url):
    with RemoteStudio(url, TOKEN, timeout_s=60) as studio:
        yield studio


def post(url: str, request: GenerationRequest, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/generate", json=call_to_wire(request, None, None), headers=headers, timeout=60)


def last_event(response: httpx.Response) -> dict:
    """The last line of a run's stream: its result (or the error it ended with)."""
    assert response.status_code == 200, response.text
    return json.loads(response.text.splitlines()[-1])


def test_a_request_through_the_ingress_gives_the_in_process_pixels(remote, local_studio):
    assert asdict(remote.served) == asdict(local_studio.served)  # a difference names its field
    assert (remote.model, remote.notes, remote.controlnets.registry) == (
        local_studio.model, local_studio.notes, local_studio.controlnets.registry)
    for request in (text_request(num_images=2), replace(text_request(), mode="edge", image=str(EDGE_MAP),
                                                        preprocessor="none", loras="stripes:0.8")):
        there, here = remote.generate(request), local_studio.generate(request)
        assert same_pixels(there, here)
        assert [image.info["parameters"] for image in there.images] == here.parameters == there.parameters
        assert as_run(there.request) == as_run(here.request)


def test_a_lora_set_stays_on_its_replica_and_a_third_set_evicts_the_least_recent(url):
    def run(name: str) -> dict:
        return last_event(post(url, text_request(loras=f"{name}:1")))["replica"]

    first = [run("stripes")["pid"] for _ in range(3)]
    assert len(set(first)) == 1
    # Five sets over two replicas holding two each: some replica got three, and the first of them went.
    sets_by_replica: dict[int, list[str]] = {}
    last_report = {}
    for name in LORAS:
        report = run(name)
        sets_by_replica.setdefault(report["pid"], []).append(name)
        last_report[report["pid"]] = report
    pid, names = max(sets_by_replica.items(), key=lambda item: len(item[1]))
    assert len(names) >= 3
    assert last_report[pid]["lora_sets"] == sorted(lora_set_id(f"{name}:1") for name in names[-2:])
    assert last_report[pid]["adapters"] == sorted(names[-2:])


def test_a_request_without_the_token_or_with_a_wrong_one_is_refused_readably(url):
    missing = post(url, text_request(), token=None)
    assert missing.status_code == 401 and "needs its token" in missing.json()["detail"]
    wrong = post(url, text_request(), token="not-" + TOKEN)
    assert wrong.status_code == 401 and "not this backend's STUDIO_BACKEND_TOKEN" in wrong.json()["detail"]
    for path in ("/facts", "/loras", "/lora?name=stripes"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
    with RemoteStudio(url, "not-" + TOKEN) as stranger, pytest.raises(StudioError, match="refused this page"):
        stranger.generate(text_request())


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
def test_a_body_past_the_limit_is_refused_without_being_read_whole(url, chunked):
    junk = b"x" * ((MAX_BODY_MB << 20) + 1)
    body = (junk[start : start + 65536] for start in range(0, len(junk), 65536)) if chunked else junk
    answer = httpx.post(f"{url}/generate", content=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert answer.status_code == 413 and "larger than the 1 MiB" in answer.json()["detail"]


def test_grids_plots_sweeps_edits_timelines_and_previews_through_a_backend_are_as_in_process(remote, local_studio):
    grid = GridRequest(text_request(), lora_names=("stripes",), weights="0.5, 1", seeds="3, 4")
    there, here = render_grid(remote, grid), render_grid(local_studio, grid)
    assert np.array_equal(np.asarray(there.image), np.asarray(here.image))
    assert [cell.parameters for cell in there.cells] == [cell.parameters for cell in here.cells]

    timeline = TimelineRequest(text_request(steps=4), keep_every=2)
    frames_there, frames_here = run_timeline(remote, timeline).frames, run_timeline(local_studio, timeline).frames
    assert [frame.step for frame in frames_there] == [frame.step for frame in frames_here] == [2, 4]
    for one, other in zip(frames_there, frames_here, strict=True):
        assert np.array_equal(np.asarray(one.latent), np.asarray(other.latent))
        assert np.array_equal(np.asarray(one.predicted), np.asarray(other.predicted))

    plot = XYRequest(text_request(prompt="a red circle"), "prompt S/R", "red, green", "guidance", "1, 3")
    there, here = render_xy(remote, plot), render_xy(local_studio, plot)
    assert np.array_equal(np.asarray(there.image), np.asarray(here.image))
    sweep = SweepRequest(text_request(), "guidance scale", "1, 4")
    assert np.array_equal(np.asarray(run_sweep(remote, sweep).image), np.asarray(run_sweep(local_studio, sweep).image))
    start = Image.open(EDGE_MAP).convert("RGB")
    for edit in (replace(text_request(), mode="img2img", image=start, strength=0.6),
                 replace(text_request(), mode="inpaint", image=str(EDGE_MAP), mask=Image.new("L", (64, 64), 255))):
        assert same_pixels(remote.generate(edit), local_studio.generate(edit)), edit.mode

    previews, steps_seen = [], []
    request = text_request(steps=6)
    eager = Previewer("embedded", previews.append, share=1.0, interval=0.0)  # a preview at every step but the last
    result = remote.generate(request, lambda done, total: steps_seen.append((done, total)), on_step=eager)
    assert steps_seen == [(step, 6) for step in range(1, 7)]
    assert [preview.step for preview in previews] == list(range(1, 6))
    assert len(previews[0].images) == 1 and previews[0].images[0].size == (64, 64)
    assert same_pixels(result, local_studio.generate(request))  # previews only read the latents


def test_stop_ends_a_remote_run_and_frees_its_replica(remote):
    steps_seen = []

    def stop_after_two_steps() -> bool:
        return len(steps_seen) >= 2

    whole = text_request(steps=100, seed=77)
    started = time.perf_counter()
    remote.generate(whole)
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    with pytest.raises(StudioError, match=STOPPED):
        remote.generate(whole, lambda done, total: steps_seen.append(done), stop_after_two_steps)
    # The stopped run no longer holds a replica: two runs at once, one per replica, finish before it would have.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(remote.generate, [text_request(seed=1), text_request(seed=2)]))
    print(f"whole run {whole_s:.2f} s; stopped, then two short runs: {time.perf_counter() - started:.2f} s")
    assert time.perf_counter() - started < 0.6 * whole_s


def test_the_page_sees_the_backends_lora_folder_and_is_told_what_stays_local(remote, local_studio):
    assert [entry.name for entry in remote.loras.available()] == sorted(f"{name}.safetensors" for name in LORAS)
    assert remote.loras.check("stripes") == local_studio.loras.check("stripes")
    with pytest.raises(StudioError, match="no LoRA 'missing.safetensors'"):
        remote.loras.check("missing")
    with pytest.raises(StudioError, match="uploaded here cannot reach it"):
        remote.loras.add_upload("/tmp/mine.safetensors")
    with pytest.raises(StudioError, match="forward noising"):
        remote.base  # noqa: B018


def test_text_requests_that_meet_on_a_replica_share_a_call_and_each_gets_its_solo_pixels(url, local_studio):
    requests = [text_request(prompt=prompt, seed=seed, steps=20) for seed, prompt in enumerate(
        ["a red circle on a blue background", "", "a yellow triangle on white", "a blue circle"])]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda request: last_event(post(url, request)), requests))
    assert max(answer["replica"]["shared"] for answer in answers) == BATCH_SIZE  # some did meet
    for request, answer in zip(requests, answers, strict=True):
        there = result_from_wire(answer["result"], request)
        here = local_studio.generate(request)
        assert (there.parameters, there.notes) == (here.parameters, here.notes)
        difference = np.abs(np.asarray(there.images[0]).astype(int) - np.asarray(here.images[0])).max()
        assert difference <= 1  # a larger batch rounds differently in the last float bits, as the grid's rows do


def test_a_request_the_studio_refuses_says_why(remote):
    with pytest.raises(StudioError, match=r"Steps must be a whole number from 1 to \d+; got 0"):
        remote.generate(text_request(steps=0))


def test_past_the_queue_limit_a_caller_reads_that_the_studio_is_busy(remote):
    def outcome(seed: int) -> str:
        try:
            remote.generate(text_request(steps=12, seed=seed))
        except StudioError as error:
            return str(error)
        return "made"

    # Each replica takes in BATCH_SIZE + 1 requests and QUEUE_LIMIT more wait: 10 at most, of 16 sent at once.
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(outcome, range(16)))
    busy = [text for text in outcomes if text != "made"]
    assert busy and all(text.startswith("The studio is busy") for text in busy), outcomes
    assert outcomes.count("made") >= 2  # each replica ran one


def test_a_replica_killed_under_a_request_costs_no_request(url, remote, local_studio, caplog):
    request = text_request(loras="mono:1", steps=100)  # about 2 s: killed in the middle
    holder = last_event(post(url, replace(request, steps=1)))["replica"]["pid"]  # the replica that holds this set
    results = []
    running = threading.Thread(target=lambda: results.append(remote.generate(request)))
    with caplog.at_level(logging.WARNING, logger="serving.client"):
        running.start()
        time.sleep(0.8)  # routed to the replica that holds the set, and running there
        os.kill(holder, signal.SIGKILL)
        running.join(timeout=60)
    assert "once more" in caplog.text  # the replica died under it, and the client sent it again
    (result,) = results
    assert same_pixels(result, local_studio.generate(request))
