"""Generation on Ray Serve, scaled out on a local cluster of this machine's cores, against in-process.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/benchmark_scaleout.py [--seconds 20] [--steps 20] [--parts ...]

Every replica and the in-process studio run the embedded model on one torch thread. In one run, it measures:
1. images per second with 1 and with 2 Generator replicas at 1, 4 and 8 clients (each client a thread sending one
   text request after another through `RemoteStudio`, the page's own client), batching off;
2. one request at a time through Serve against the same request in this process, alternating;
3. 8 clients on 2 replicas with batching on (up to 4 requests a call) against off;
4. adapter loads per 100 requests over 6 LoRA sets, routed by set (Serve's multiplexing) and not routed (the same
   calls through a handle without the model id), on 2 replicas that keep 3 sets each;
5. scaling up: with serving/config.yaml's autoscaling settings, the time from 8 clients starting on one replica to
   a second replica's first image.
The figures go to docs/benchmarks.md ("Generation on Ray Serve").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from ray import serve
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.request import GenerationRequest
from pipelines.settings import EMBEDDED_LORAS, PROJECT_ROOT, Settings
from pipelines.studio import Studio
from serving.client import RemoteStudio
from serving.local import local_cluster
from serving.wire import call_to_wire, lora_set_id

TOKEN = "benchmark-token"
PROMPTS = ["a red circle on a blue background", "a green square on white", "a yellow triangle", "a blue circle"]
ENVIRONMENT = {"STUDIO_BACKEND_TOKEN": TOKEN, "STUDIO_DEVICE": "cpu", "STUDIO_THREADS": "1", "OMP_NUM_THREADS": "1"}


def request(index: int, steps: int, **changes) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPTS[index % len(PROMPTS)], seed=index, steps=steps, **changes)


@contextmanager
def cluster(replicas: int, batch_size: int = 1, lora_dir: Path | None = None,
            autoscaling: dict | None = None) -> Iterator[str]:
    environment = {**ENVIRONMENT, **({"STUDIO_LORA_DIR": str(lora_dir)} if lora_dir else {})}
    with (local_cluster(environment, replicas=replicas, batch_size=batch_size, lora_sets_per_replica=3,
                        queue_limit=64, autoscaling=autoscaling) as url,
          RemoteStudio(url, TOKEN, timeout_s=300) as studio):
        for index in range(2 * replicas):  # every replica warm before the clock starts
            studio.generate(request(index, 2))
        yield url


def images_per_second(url: str, clients: int, seconds: float, steps: int) -> float:
    """Clients each sending one request after another for `seconds`: the images made per second, all together."""
    made = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        with RemoteStudio(url, TOKEN, timeout_s=300) as studio:
            index = number
            while time.perf_counter() < deadline:
                studio.generate(request(index, steps))
                made[number] += 1
                index += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(made) / (time.perf_counter() - started)


def scaling(seconds: float, steps: int) -> None:
    rates: dict[tuple[int, int], float] = {}
    for replicas in (1, 2):
        with cluster(replicas) as url:
            for clients in (1, 4, 8):
                rates[replicas, clients] = images_per_second(url, clients, seconds, steps)
                print(f"  {replicas} replica(s), {clients} client(s): {rates[replicas, clients]:.2f} images/s",
                      flush=True)
    for clients in (1, 4, 8):
        print(f"2 replicas against 1 at {clients} client(s): {rates[2, clients] / rates[1, clients]:.2f}x")


def single_request(steps: int, repeats: int = 12) -> None:
    torch.set_num_threads(1)
    studio = Studio(Settings(device="cpu", threads=1))
    with cluster(1) as url, RemoteStudio(url, TOKEN) as remote:
        here, there = [], []
        for index in range(repeats):  # alternating, so both see the same machine
            sent = request(index, steps)
            started = time.perf_counter()
            local = studio.generate(sent)
            here.append(time.perf_counter() - started)
            started = time.perf_counter()
            served = remote.generate(sent)
            there.append(time.perf_counter() - started)
            assert np.array_equal(np.asarray(local.images[0]), np.asarray(served.images[0])), "different pixels"
    print(f"one request: in-process {statistics.median(here):.3f} s, through Serve {statistics.median(there):.3f} s "
          f"(median of {repeats}): {statistics.median(there) / statistics.median(here):.2f}x")


def batching(seconds: float, steps: int) -> None:
    rates = {}
    for batch_size in (1, 4):
        with cluster(2, batch_size=batch_size) as url:
            rates[batch_size] = images_per_second(url, 8, seconds, steps)
            print(f"  2 replicas, 8 clients, batch size {batch_size}: {rates[batch_size]:.2f} images/s", flush=True)
    print(f"batched against unbatched at 8 clients: {rates[4] / rates[1]:.2f}x")


def lora_folder(folder: Path) -> list[str]:
    """Six LoRAs of their own content (each a scaled copy of an embedded one), one set each."""
    names = []
    for index in range(6):
        source = ("stripes", "mono")[index % 2]
        scale = 0.5 + 0.25 * index
        with safe_open(EMBEDDED_LORAS / f"{source}.safetensors", "pt") as file:
            tensors = {key: file.get_tensor(key) * (scale if "lora_B" in key else 1.0) for key in file.keys()}
            save_file(tensors, folder / f"set{index}.safetensors", metadata=file.metadata())
        names.append(f"set{index}")
    return names


def adapter_loads(folder: Path, requests: int = 100) -> None:
    names = lora_folder(folder)
    order = random.Random(0).choices(names, k=requests)
    for routed in (True, False):
        with cluster(2, lora_dir=folder):
            generator = serve.get_deployment_handle("Generator", app_name="embedded")
            reports = {}
            for index, name in enumerate(order):
                sent = request(index, 2, loras=f"{name}:1")
                options = {"multiplexed_model_id": lora_set_id(sent.loras)} if routed else {}
                events = list(generator.options(stream=True, **options).run.remote(call_to_wire(sent, None, None)))
                replica = events[-1]["replica"]
                reports[replica["pid"]] = replica["adapter_loads"]
            loads = sum(reports.values())
        how = "routed by set (multiplexed)" if routed else "not routed"
        print(f"adapter loads per {requests} requests over 6 sets, {how}: {loads} (per replica: "
              f"{sorted(reports.values())})")


def scale_up(steps: int) -> None:
    config = yaml.safe_load((PROJECT_ROOT / "serving" / "config.yaml").read_text())
    [generator] = [deployment for deployment in config["applications"][0]["deployments"]
                   if deployment["name"] == "Generator"]
    autoscaling = generator["autoscaling_config"]
    with cluster(1, autoscaling=autoscaling) as url:
        pids: dict[int, float] = {}
        started = time.perf_counter()
        deadline = started + 180

        def client(number: int) -> None:
            with RemoteStudio(url, TOKEN, timeout_s=300) as studio:
                index = number
                while len(pids) < 2 and time.perf_counter() < deadline:
                    studio.generate(request(index, steps))
                    index += 8

        def watch() -> None:  # a request of its own now and then: which replica answered
            while len(pids) < 2 and time.perf_counter() < deadline:
                answer = last_answer(url, request(0, 2))
                pids.setdefault(answer["replica"]["pid"], time.perf_counter() - started)
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
        threads.append(threading.Thread(target=watch))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seconds = sorted(pids.values())
    verdict = f"{seconds[1]:.1f} s" if len(seconds) > 1 else "not within 180 s"
    print(f"scale-up with {autoscaling}: a second replica's first image after {verdict}")


def last_answer(url: str, sent: GenerationRequest) -> dict:
    response = httpx.post(f"{url}/generate", json=call_to_wire(sent, None, None),
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
    return json.loads(response.text.splitlines()[-1])


PARTS = ("scaling", "single", "batching", "loads", "scale-up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="each throughput measurement's length")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per request")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="what to measure (default: all)")
    args = parser.parse_args()
    print(f"embedded model, {args.steps} steps, one torch thread per replica and in-process")
    if "scaling" in args.parts:
        scaling(args.seconds, args.steps)
    if "single" in args.parts:
        single_request(args.steps)
    if "batching" in args.parts:
        batching(args.seconds, args.steps)
    if "loads" in args.parts:
        with tempfile.TemporaryDirectory() as folder:
            adapter_loads(Path(folder))
    if "scale-up" in args.parts:
        scale_up(args.steps)


if __name__ == "__main__":
    main()
