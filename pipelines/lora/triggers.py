"""Trigger words: the words a LoRA was trained to respond to, added to a prompt once each."""

from __future__ import annotations

from collections.abc import Iterable


def add_trigger_words(prompt: str, words: Iterable[str]) -> str:
    """Append the words the prompt does not already contain, comma-separated."""
    present = prompt.lower()
    missing = [word for word in dict.fromkeys(words) if word.lower() not in present]
    return ", ".join(part for part in [prompt.strip().rstrip(","), *missing] if part)
