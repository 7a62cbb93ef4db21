"""The API as callers see it does not change by accident: `client.view_api()` of `python app.py` (the embedded
model) equals the dump in tests/fixtures/view_api.json, taken before the endpoints were declared in one place.

After a deliberate change to the API, write the dump again:

    HF_HUB_OFFLINE=1 python -m pytest tests/test_api_surface.py --update-api-dump
"""

from __future__ import annotations

import json
from pathlib import Path

from gradio_client import Client

DUMP = Path(__file__).parent / "fixtures" / "view_api.json"


def test_the_api_is_what_it_was(app_url, request):
    served = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")
    if request.config.getoption("--update-api-dump"):
        DUMP.write_text(json.dumps(served, indent=1, sort_keys=True))
    assert json.loads(json.dumps(served)) == json.loads(DUMP.read_text())
