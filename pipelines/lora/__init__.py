"""LoRAs for the studio: safe reading, layouts and families, sources, the adapter manager, the grid."""

from pipelines.lora.manager import LoraManager
from pipelines.lora.sources import LoraEntry

__all__ = ["LoraEntry", "LoraManager"]
