"""LoRAs for the studio: safe reading, layouts and families, sources, the adapter manager, what a file is (its
hashes, its header, its weights per block) and where it stands in its training run."""

from pipelines.lora.manager import LoraManager
from pipelines.lora.sources import LoraEntry

__all__ = ["LoraEntry", "LoraManager"]
