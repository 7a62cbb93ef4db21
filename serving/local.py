"""The application on a local Ray cluster in this process: what the tests, the browser suite and
`scripts/benchmark_scaleout.py` run it on (`ray.init(num_cpus=...)`, no dashboard)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve

from serving.app import Generator, Ingress

# Serve checks every 2 s by default whether a stopping replica is idle; a test cluster stops at once.
QUICK_STOP = {"graceful_shutdown_wait_loop_s": 0.1}


@contextmanager
def local_cluster(
    environment: dict[str, str],
    *,
    replicas: int = 2,
    cpus: int = 2,
    gpus: int = 0,
    cpus_per_replica: float = 0.5,
    lora_sets_per_replica: int = 2,
    queue_limit: int = 16,
    max_body_mb: int = 512,
    batch_size: int = 1,
    autoscaling: dict | None = None,
) -> Iterator[str]:
    """A cluster of `cpus` (and `gpus`, shared by the replicas) running the application with `replicas`
    Generators, or as many as `autoscaling` (Serve's autoscaling_config) asks for; yields its URL. `environment` (the
    studio's settings and STUDIO_BACKEND_TOKEN) is what the cluster's processes start with."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    before = dict(os.environ)
    os.environ.update(environment)  # the cluster's processes inherit the environment it starts with
    try:
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, object_store_memory=200 * 2**20,
                 logging_level=logging.WARNING)
    finally:
        os.environ.clear()
        os.environ.update(before)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}
        # One request more than share a call waits on the replica (serving/config.yaml says why).
        generator = Generator.options(
            **scale, max_queued_requests=queue_limit, max_ongoing_requests=batch_size + 1,
            ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus / replicas}, **QUICK_STOP,
        ).bind(lora_sets_per_replica, batch_size)
        ingress = Ingress.options(ray_actor_options={"num_cpus": 0.25}, **QUICK_STOP)
        serve.run(ingress.bind(generator, max_body_mb), name="embedded", route_prefix="/embedded")
        yield f"http://127.0.0.1:{port}/embedded"
    finally:
        serve.shutdown()
        ray.shutdown()
