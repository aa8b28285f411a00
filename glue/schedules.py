"""Schedules against a real model: which units it has, calibration runs, and sampling
with the user's own settings (what the schedule-making nodes share)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import find_adapter
from ..cache_core.schedule_rules import block_caching, step_rehash
from ..methods import CalibrationConfig
from ..methods.attach import diffusion_model_of
from . import patch


def model_adapter(model, input_name: str = "model"):
    """The adapter of a ComfyUI MODEL, or a clear error naming the input."""
    diffusion_model = diffusion_model_of(model)
    adapter = find_adapter(diffusion_model)
    if adapter is None:
        name = type(diffusion_model).__name__ if diffusion_model is not None else type(model).__name__
        raise ValueError(f"{input_name}: {name} is not a model family this pack can schedule")
    return adapter


def model_units(model, input_name: str = "model"):
    """(family, unit names) a schedule for this model must carry."""
    adapter = model_adapter(model, input_name)
    return adapter.family, tuple(adapter.schedule_units())


@dataclass(frozen=True)
class Sampling:
    """The user's sampling settings, as a KSampler takes them."""
    positive: list
    negative: list
    latent: dict
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0

    def run(self, model, callback=None) -> torch.Tensor:
        import comfy.sample
        samples = self.latent["samples"]
        if hasattr(comfy.sample, "fix_empty_latent_channels"):  # newer hosts: match the model's channels
            samples = comfy.sample.fix_empty_latent_channels(model, samples)
        noise = comfy.sample.prepare_noise(samples, self.seed, self.latent.get("batch_index"))
        return comfy.sample.sample(model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                   self.positive, self.negative, samples, denoise=self.denoise,
                                   noise_mask=self.latent.get("noise_mask"), seed=self.seed,
                                   callback=callback, disable_pbar=True)


def measure_change(model, sampling: Sampling, probe_unit: int = -1):
    """Run the model once, computing everything, and profile each unit's change per step
    (and the similarity across steps of unit `probe_unit`'s residual)."""
    measured = patch.apply_method(model, CalibrationConfig(probe_unit=probe_unit))
    if measured is model:
        raise ValueError("model: not a model family this pack can calibrate")
    sampling.run(measured)
    return patch.last_result(measured)


def block_caching_schedule(model, sampling: Sampling, threshold: float, first_full_steps: int = 1):
    family, units = model_units(model)
    profile = measure_change(model, sampling)
    schedule = block_caching(profile.relative_change(), units, family, threshold, first_full_steps)
    return schedule, profile


def step_rehash_schedule(model, sampling: Sampling, threshold: float, keep_first: int = 1,
                         first_full_steps: int = 1, probe_block: int = -1):
    """Key steps where unit `probe_block`'s output (-1: the last, the deepest) drifts from the last key step."""
    family, units = model_units(model)
    if not -len(units) <= probe_block < len(units):
        raise ValueError(f"probe_block: this model has {len(units)} blocks (0 to {len(units) - 1}, or -1 for "
                         f"the last), got {probe_block}")
    profile = measure_change(model, sampling, probe_block)
    return step_rehash(profile.similarity(), units, family, threshold, keep_first, first_full_steps), profile
