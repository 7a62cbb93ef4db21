"""A crowd on the embedded model: many gradio_client clients at once, each looping over every endpoint, while a
probe fetches the page; what was served, what was refused, how long it took, and the server's memory.

    HF_HUB_OFFLINE=1 python scripts/load_test.py [--clients 40] [--seconds 120] [--greedy 4] [--backoff 2]
                                                 [--app-env STUDIO_QUEUE_SIZE=16 ...]

It starts `python app.py` (the embedded model, one torch thread, the default STUDIO_QUEUE_SIZE 32 and
STUDIO_SESSION_QUEUE 3 unless `--app-env` says otherwise) on a free port and calls every endpoint once to warm it
up. Then each client (one session) calls the endpoints in turn with small settings (4 steps, 64x64, one image), one
request at a time; the `--greedy` ones send four at once each round, which the per-visitor share answers. After a
busy refusal a client waits about `--backoff` seconds, as a person would: clients that retry at once turn the load
script into the machine's busiest process. A probe, in a process of its own, fetches the page (GET /) every 0.2 s
throughout.

It prints, per endpoint, the calls served, the busy refusals (queue full, visitor's share) and anything else that
failed, with p50/p95 latency of those served (waiting in the queue included); the page's p50/p99/max; the server's
resident memory at the start, middle and end and every 10 s; and the CPU time the server, this script and the rest
of the machine used, since all share the same cores. Exit status 1 when anything failed other than the studio's
"busy" refusals.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from embedded.app_process import running_app
from pipelines.settings import PROJECT_ROOT, Settings
from ui.queue import BUSY

EXAMPLES = PROJECT_ROOT / "examples" / "embedded"
PROMPT = "a red circle on a blue background"
FAST = dict(steps=4, seed=1)
PAGE_EVERY_S = 0.2
PAGE_TARGET_S = 1.0
MEMORY_EVERY_S = 10
GIB = 1024**3


def example(name: str) -> dict:
    return handle_file(str(EXAMPLES / name))


def endpoints(made_here: str) -> dict[str, Callable[[], dict]]:
    """Each endpoint's keyword arguments, fresh per call (`handle_file` dicts are not shared between threads)."""
    return {
        "/text2img": lambda: dict(prompt=PROMPT, **FAST),
        "/pose2img": lambda: dict(image=example("pose_4_map.png"), preprocessor="none",
                                  prompt="a person in a green shirt with the left arm raised", **FAST),
        "/edge2img": lambda: dict(image=example("edge_0_source.png"), preprocessor="canny",
                                  prompt="a orange triangle on a blue background", **FAST),
        "/depth2img": lambda: dict(image=example("depth_2_map.png"), preprocessor="none",
                                   prompt="a purple square on a yellow background", **FAST),
        "/img2img": lambda: dict(image=example("img2img_6_image.png"), strength=0.7,
                                 prompt="a green circle on a blue background", **FAST),
        "/inpaint": lambda: dict(image=example("inpaint_7_image.png"), mask=example("inpaint_7_mask.png"),
                                 prompt="a yellow triangle on a purple background", **FAST),
        "/lora_grid": lambda: dict(lora_names=["stripes.safetensors"], weights="0.5, 1", seeds="1", prompt=PROMPT,
                                   steps=4),
        "/png_info": lambda: dict(image=handle_file(made_here)),
        "/denoise_timeline": lambda: dict(prompt=PROMPT, keep_every=2, **FAST),
        "/forward_noise": lambda: dict(clean_image=example("img2img_6_image.png"), timestep=400, seed=1),
        "/sweep": lambda: dict(sweep="guidance scale", guidance_scales="1, 4", prompt=PROMPT, **FAST),
        "/loras": dict,
    }


@dataclass
class Tally:
    """Outcomes per endpoint: seconds of each call served, and refusals and failures by kind."""

    served: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refused: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, endpoint: str, seconds: float, error: BaseException | None) -> bool:
        """Count one answer; True when it was the studio's busy refusal."""
        with self.lock:
            if error is None:
                self.served[endpoint].append(seconds)
            elif isinstance(error, AppError) and str(error).startswith(BUSY):
                self.refused[endpoint]["queue full" if "the queue holds" in str(error) else "share"] += 1
                return True
            else:
                self.failures[endpoint].append(f"{type(error).__name__}: {error}"[:300])
            return False


def timed_call(client: Client, endpoint: str, arguments: dict, tally: Tally) -> bool:
    start = time.perf_counter()
    try:
        client.predict(**arguments, api_name=endpoint)
        error = None
    except Exception as caught:  # noqa: BLE001 - every failure is counted and shown
        error = caught
    return tally.record(endpoint, time.perf_counter() - start, error)


def timed_burst(client: Client, calls: list[tuple[str, dict]], tally: Tally) -> bool:
    """Send all `calls` at once, as a visitor with several tabs (or a script) does; each is timed to its answer."""
    start = time.perf_counter()
    jobs = {client.submit(**arguments, api_name=endpoint).future: endpoint for endpoint, arguments in calls}
    refused = [tally.record(jobs[job], time.perf_counter() - start, job.exception()) for job in as_completed(jobs)]
    return any(refused)


def visitor(client: Client, mix: dict, offset: int, greedy: bool, backoff_s: float, until: float,
            tally: Tally) -> None:
    """Call the endpoints in turn until `until`; after a busy refusal, wait about `backoff_s` as a person would."""
    names = list(mix)
    turn = itertools.cycle(names[offset % len(names):] + names[:offset % len(names)])
    while time.monotonic() < until:
        if greedy:
            refused = timed_burst(client, [(name, mix[name]()) for name in itertools.islice(turn, 4)], tally)
        else:
            name = next(turn)
            refused = timed_call(client, name, mix[name](), tally)
        if refused:
            time.sleep(random.uniform(0.5, 1.5) * backoff_s)


def probe_page(url: str, until: float, seconds: list[float], failures: list[str]) -> None:
    """In a process of its own (`page_probe`): a thread here would wait for this script's GIL behind 40 clients,
    and time them, not the server."""
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                http.get(url).raise_for_status()
                seconds.append(time.perf_counter() - start)
            except httpx.HTTPError as error:
                failures.append(f"{type(error).__name__}: {error}")
            time.sleep(max(0.0, PAGE_EVERY_S - (time.perf_counter() - start)))


def page_probe(url: str, until: float) -> Callable[[], tuple[list[float], list[str]]]:
    """Start `probe_page` in another process; the returned call waits for it and gives its times and failures."""
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    seconds, failures = manager.list(), manager.list()
    process = context.Process(target=probe_page, args=(url, until, seconds, failures))
    process.start()

    def results() -> tuple[list[float], list[str]]:
        process.join()
        found = list(seconds), list(failures)
        manager.shutdown()
        return found

    return results


def sample_memory(server: psutil.Process, until: float, samples: list[int]) -> None:
    while time.monotonic() < until:
        samples.append(server.memory_info().rss)
        time.sleep(MEMORY_EVERY_S)


def percentiles(values: list[float], *points: float) -> list[float]:
    return [float(np.percentile(values, point)) for point in points] if values else [float("nan")] * len(points)


def busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def warm_up(url: str, downloads: Path) -> str:
    """One call per endpoint (ControlNets load on first use); returns a PNG made here, for /png_info."""
    client = Client(url, verbose=False, download_files=str(downloads))
    gallery, *_ = client.predict(prompt=PROMPT, **FAST, api_name="/text2img")
    made_here = gallery[0]["image"]
    for name, arguments in endpoints(made_here).items():
        client.predict(**arguments(), api_name=name)
    return made_here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--greedy", type=int, default=4, help="clients that send four requests at once each round")
    parser.add_argument("--backoff", type=float, default=2.0,
                        help="seconds a client waits (on average) after a busy refusal before its next request")
    parser.add_argument("--app-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the app, say STUDIO_QUEUE_SIZE=16; repeatable")
    args = parser.parse_args()
    app_env = dict(pair.split("=", 1) for pair in args.app_env)
    settings = Settings.from_env(app_env)
    with tempfile.TemporaryDirectory() as scratch:
        downloads = Path(scratch) / "downloads"
        with running_app(Path(scratch) / "app.log", **app_env) as (process, url):
            server = psutil.Process(process.pid)
            memory = {"before warm-up": server.memory_info().rss}
            made_here = warm_up(url, downloads)
            mix = endpoints(made_here)
            clients = [Client(url, verbose=False, download_files=str(downloads)) for _ in range(args.clients)]
            print(f"{args.clients} clients ({args.greedy} of them greedy) for {args.seconds:.0f} s on {url}, embedded "
                  f"model{''.join(f', {pair}' for pair in args.app_env)}; queue size {settings.queue_size}, "
                  f"{settings.session_queue} per visitor; "
                  f"{psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start", flush=True)

            tally, rss = Tally(), []
            cpu_start = (server.cpu_times(), psutil.Process().cpu_times(), busy_seconds())
            memory["start"] = server.memory_info().rss
            began = time.monotonic()
            until = began + args.seconds
            page_results = page_probe(url, until)
            threads = [
                threading.Thread(target=visitor,
                                 args=(client, mix, index, index < args.greedy, args.backoff, until, tally))
                for index, client in enumerate(clients)
            ]
            threads.append(threading.Thread(target=sample_memory, args=(server, until, rss)))
            for thread in threads:
                thread.start()
            time.sleep(args.seconds / 2)
            memory["middle"] = server.memory_info().rss
            for thread in threads:
                thread.join()
            page_seconds, page_failures = page_results()
            elapsed = time.monotonic() - began
            memory["end"] = server.memory_info().rss
            cpu_end = (server.cpu_times(), psutil.Process().cpu_times(), busy_seconds())
            load_end = os.getloadavg()[0]
    report(tally, page_seconds, page_failures, memory, rss, cpu_start, cpu_end, elapsed, load_end)
    other_failures = sum(len(messages) for messages in tally.failures.values()) + len(page_failures)
    raise SystemExit(1 if other_failures else 0)


def report(tally: Tally, page_seconds, page_failures, memory, rss, cpu_start, cpu_end, elapsed, load_end) -> None:
    print(f"\n{'endpoint':<18} {'served':>6} {'busy: full':>10} {'busy: share':>11} {'failed':>6} "
          f"{'p50 s':>7} {'p95 s':>7}")
    names = sorted(set(tally.served) | set(tally.refused) | set(tally.failures))
    for name in names:
        p50, p95 = percentiles(tally.served[name], 50, 95)
        refused = tally.refused[name]
        print(f"{name:<18} {len(tally.served[name]):>6} {refused['queue full']:>10} {refused['share']:>11} "
              f"{len(tally.failures[name]):>6} {p50:>7.2f} {p95:>7.2f}")
    served = sum(len(seconds) for seconds in tally.served.values())
    print(f"{'all':<18} {served:>6} {sum(c['queue full'] for c in tally.refused.values()):>10} "
          f"{sum(c['share'] for c in tally.refused.values()):>11} "
          f"{sum(len(f) for f in tally.failures.values()):>6}   ({served / elapsed:.2f} served a second over "
          f"{elapsed:.0f} s)")
    for name, messages in tally.failures.items():
        for message, count in Counter(messages).most_common(3):
            print(f"  failed {name} x{count}: {message}")

    p50, p99 = percentiles(page_seconds, 50, 99)
    worst = max(page_seconds, default=float("nan"))
    verdict = "within" if p99 < PAGE_TARGET_S else "OVER"
    print(f"\npage GET /: {len(page_seconds)} fetches, p50 {p50:.2f} s, p99 {p99:.2f} s ({verdict} the "
          f"{PAGE_TARGET_S:.0f} s target), max {worst:.2f} s, failed {len(page_failures)}")
    for message, count in Counter(page_failures).most_common(3):
        print(f"  failed GET / x{count}: {message}")

    print("server resident memory: " + ", ".join(f"{when} {rss / GIB:.2f} GiB" for when, rss in memory.items())
          + f" (end - start {(memory['end'] - memory['start']) / 2**20:+.0f} MiB)")
    print(f"  every {MEMORY_EVERY_S} s (GiB): " + " ".join(f"{value / GIB:.2f}" for value in rss))
    server = sum(cpu_end[0][:2]) - sum(cpu_start[0][:2])
    script = sum(cpu_end[1][:2]) - sum(cpu_start[1][:2])
    machine = cpu_end[2] - cpu_start[2]
    print(f"CPU seconds over {elapsed:.0f} s on {psutil.cpu_count()} cores: server {server:.0f}, this script "
          f"{script:.0f}, rest of the machine {max(0.0, machine - server - script):.0f}; load average "
          f"{load_end:.2f} at the end")


if __name__ == "__main__":
    main()
