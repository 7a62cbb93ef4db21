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


@pytest.mark.parametrize(("text", "expected"), [
    ("0-1 step 0.25", (0.0, 0.25, 0.5, 0.75, 1.0)),
    ("0, 0.5, 1", (0.0, 0.5, 1.0)),
    ("-1 - 1 step 1, 1.5", (-1.0, 0.0, 1.0, 1.5)),
    ("0-0.3 step 0.1", (0.0, 0.1, 0.2, 0.3)),  # the end is kept despite 0.1's float error
])
def test_weights_take_ranges_as_trainers_write_them(tiny_studio, text, expected):
    assert tuple(strength.weight for strength in cleaned(tiny_studio, "weights", text)) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("0-2 step 0.001", "has 2001 values; at most 8"),
    ("0-1000000000 step 0.000001", "values; at most 8"),
    ("1-0 step 0.5", "must go up"),
    ("0-1 step 0", "must go up"),
    ("0-3 step 1", "from -2 to 2"),  # each value still within the declared range
])
def test_a_range_past_the_limits_is_refused_by_name_without_being_built(tiny_studio, text, words):
    with pytest.raises(StudioError, match="Weights") as refused:
        cleaned(tiny_studio, "weights", text)
    assert words in str(refused.value)


def test_a_lora_name_no_file_can_have_is_refused_by_name(tiny_studio):
    with pytest.raises(StudioError, match="LoRAs: the LoRA name 'aaaa.*longer than 255"):
        cleaned(tiny_studio, "loras", "a" * 1500 + ":1")
