"""Model logic of the diffusion studio: loading, modes, preprocessors, LoRAs, schedulers, metadata."""

import os

# Torch's CPU tensors of 2 MB and more on transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE). Without it a
# real-size SD1.5 request at 256 px took 1.5 to 5.2 million page faults (glibc hands the activations' memory back to
# the kernel and takes it again at every step) and 6-8% longer; with it, about 200,000 (scripts/benchmark_lora_tax.py).
# Torch reads the variable once, at its first allocation, so it is set here, where the package starts, before any of
# its modules imports torch; THP_MEM_ALLOC_ENABLE=0 in the environment keeps 4 KB pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
