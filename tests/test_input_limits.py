"""Every list a person writes as text is refused by name past its limit before it is split or parsed: a megabyte of
"stripes:1," once held the server's GIL for 1.4 s, and the page with it."""

from __future__ import annotations

import re

import pytest

from pipelines import validation
from pipelines.errors import StudioError
from pipelines.parameters import PARAMETERS, bind
from pipelines.validation import MAX_LIST_CHARS, MAX_LORAS, MAX_NAME_CHARS, MAX_NAMES, clean

MEGABYTE = 2**20


def cleaned(tiny_studio, name: str, value: object) -> object:
    return clean(bind(PARAMETERS[name], tiny_studio.served), value, [])


@pytest.fixture
def nothing_parsed(monkeypatch):
    """Past the limit, not one item may be parsed."""

    def refuse(*args):
        raise AssertionError("parsed an item of a text past its limit")

    monkeypatch.setattr(validation, "_parse_lora", refuse)
    monkeypatch.setattr(validation, "_parse_number", refuse)


@pytest.mark.parametrize(
    ("name", "text"),
    [("loras", "stripes:1," * (MEGABYTE // 10)), ("together", "a:1," * (MEGABYTE // 4)),
     ("weights", "1," * (MEGABYTE // 2)), ("seeds", "7;" * (MEGABYTE // 2))],
    ids=["loras", "together", "weights", "seeds"],
)
def test_a_megabyte_list_is_refused_by_name_unparsed(tiny_studio, nothing_parsed, name, text):
    label = re.escape(PARAMETERS[name].label)
    with pytest.raises(StudioError, match=rf"^{label}.*{len(text)} characters; the limit is {MAX_LIST_CHARS}"):
        cleaned(tiny_studio, name, text)


def test_a_prompt_past_its_limit_is_refused_before_its_characters_are_scanned(tiny_studio, monkeypatch):
    monkeypatch.setattr(validation, "_check_characters", lambda *args: pytest.fail("scanned a text past its limit"))
    with pytest.raises(StudioError, match="Prompt has 1048576 characters; the limit is 2000"):
        cleaned(tiny_studio, "prompt", "a" * MEGABYTE)


def test_lora_and_name_counts_have_limits(tiny_studio):
    within = ", ".join(f"style{index}:0.5" for index in range(MAX_LORAS))
    assert len(cleaned(tiny_studio, "loras", within)) == MAX_LORAS
    with pytest.raises(StudioError, match=rf"at most {MAX_LORAS} LoRAs run at once; got {MAX_LORAS + 1}"):
        cleaned(tiny_studio, "loras", f"{within}, one_more:1")
    with pytest.raises(StudioError, match=rf"at most {MAX_NAMES} names; got {MAX_NAMES + 1}"):
        cleaned(tiny_studio, "lora_names", [f"style{index}" for index in range(MAX_NAMES + 1)])
    with pytest.raises(StudioError, match=rf"the limit is {MAX_NAME_CHARS}"):
        cleaned(tiny_studio, "lora_names", ["x" * (MAX_NAME_CHARS + 1)])
