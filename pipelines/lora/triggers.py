"""Trigger words: the words a LoRA was trained to respond to, added to a prompt once each.

They go first: trainers put a LoRA's trigger at the front of every caption (kohya's `keep_tokens` keeps it there
when captions are shuffled), and a text encoder reads a word by its place too. On the embedded model `stripes`
at weight 1 raised the evaluation's stripe energy from 0.048 to 0.090 with `zkstripes` first, and from 0.017 to
only 0.022 with it last (8 prompts, 20 steps), so a grid with appended triggers showed almost no stripes.
"""

from __future__ import annotations

from collections.abc import Iterable


def add_trigger_words(prompt: str, words: Iterable[str]) -> str:
    """Put the words the prompt does not already contain in front of it, comma-separated."""
    present = prompt.lower()
    missing = [word for word in dict.fromkeys(words) if word.lower() not in present]
    return ", ".join(part for part in [*missing, prompt.strip().rstrip(",")] if part)
