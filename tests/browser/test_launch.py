"""`python app.py` as Hugging Face Spaces start it: GRADIO_SERVER_NAME=0.0.0.0 must reach the listening socket.

Needs no browser; it lives beside the helper that starts the app. Only loopback is ever connected to.
"""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

import psutil

from embedded.app_process import running_app


def listening_addresses(pid: int, port: int) -> set[str]:
    return {
        connection.laddr.ip
        for connection in psutil.Process(pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }


def test_gradio_server_name_0_0_0_0_listens_on_every_interface(tmp_path):
    with running_app(tmp_path / "app.log", GRADIO_SERVER_NAME="0.0.0.0") as (process, url):
        assert listening_addresses(process.pid, urlsplit(url).port) == {"0.0.0.0"}
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"Diffusion studio" in response.read()
