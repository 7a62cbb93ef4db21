"""`spaces.GPU` marks GPU work on Hugging Face ZeroGPU Spaces; elsewhere it changes nothing."""

from collections.abc import Callable

try:
    from spaces import GPU as gpu_task
except ImportError:  # not on Spaces: nothing to mark

    def gpu_task(function: Callable) -> Callable:
        return function
