"""Model logic of the diffusion studio: loading, modes, preprocessors, LoRAs, schedulers, metadata."""
