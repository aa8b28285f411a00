"""What the nodes need from the host beyond the node schema: its sampler and scheduler
names, a progress bar and the interrupt check (nodes/ imports no host module itself)."""
from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.samplers
import comfy.utils


def sampler_names() -> list:
    """The host's samplers, read on each call: other packs may add theirs after we load."""
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list:
    return list(comfy.samplers.KSampler.SCHEDULERS)


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback that moves the running node's bar in the UI."""
    bar = comfy.utils.ProgressBar(total)
    return lambda done, total: bar.update_absolute(done, total)


def check_interrupted() -> None:
    """Raises the host's interrupt exception once the user has pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()
