"""Forge's extension point: a model function wrapper on a clone of the U-Net patcher (and block
replacements where the host's forward honours `patches_replace["dit"]`, as ComfyUI and Forge
Neo do). One SamplingPass per sampling pass: Forge asks scripts for a fresh patcher before
every pass (first pass, hires-fix pass, every batch), so nothing survives into the next one.

Forge passes no sigma schedule to the model, so the script hands it in (from the pass's
sampler). Without one, the steps are counted from the sigmas the calls carry: right for
samplers with one model evaluation per step (and Heun's), not for those that also evaluate
between steps (DPM++ 2S, SDE).
"""
from __future__ import annotations

import logging
import types

from ..methods import HostContext, RunState, executor_for
from ..methods.attach import adapter_for, diffusion_model_of, patch_blocks
from ..methods.engine import current_sigma, end_run
from ..methods.protocol import STEP_OUTPUTS, UNSCHEDULED

LOG = logging.getLogger("comfyui-duca")
_warned = set()     # pass-through reasons already warned about (once per process)


def accelerate(unet, settings, steps: int, sigmas=None, sampler_function=None, listeners=()):
    """(a clone of `unet` running `settings` for one pass of `steps` steps, the SamplingPass), or
    (`unet`, None) where no method can run on it: passed through, warned once per model class."""
    model = getattr(unet, "model", None)
    sampling = getattr(model, "predictor", None) or getattr(model, "model_sampling", None)
    adapter, config, why_not = adapter_for(diffusion_model_of(unet), sampling, lambda found: settings.config_for(found, steps))
    if why_not:
        if why_not not in _warned:
            _warned.add(why_not)
            LOG.warning("DuCa: %s; generating without it.", why_not)
        return unet, None
    sampler = types.SimpleNamespace(sampler_function=sampler_function) if sampler_function else None
    schedule = tuple(float(s) for s in sigmas) if sigmas is not None else (UNSCHEDULED,) * (int(steps) + 1)
    sampling_pass = SamplingPass(config, adapter, HostContext(schedule, sampling, sampler), listeners)
    patched = unet.clone()
    patched.set_model_unet_function_wrapper(sampling_pass.wrapper(patched.model_options.get("model_function_wrapper")))
    patch_blocks(patched, adapter, sampling_pass.live_run)
    return patched, sampling_pass


class SamplingPass:
    """The runs of one sampling pass (a new one whenever the sigma rises: another sampling)."""

    def __init__(self, config, adapter, host: HostContext, listeners=()):
        """`host`: the pass's sigmas, where the script could give them (else UNSCHEDULED, filled in
        from the calls as they come), the model's sampling and the sampler."""
        self.config, self.adapter, self.host = config, adapter, host
        self.listeners = list(listeners)
        self.run = None
        self.last_sigma = None
        self.seen = 0             # counted steps (no schedule given)
        self.blocks_handed = 0    # block calls that reached the run

    # --- the host's calls ----------------------------------------------------
    def wrapper(self, inner=None):
        """A `model_function_wrapper`: `(apply_model, {"input", "timestep", "c", "cond_or_uncond"})`;
        chains to a wrapper another extension set before."""
        def unet_function(apply_model, params):
            def model(x, t, **c):
                if inner is None:
                    return apply_model(x, t, **c)
                return inner(apply_model, {**params, "input": x, "timestep": t, "c": c})
            c = dict(params["c"])
            options = c.get("transformer_options")
            run = self._run_at(current_sigma(options or {}))
            if run is None or options is None:
                return model(params["input"], params["timestep"], **c)
            return run.model_call(model, (params["input"], params["timestep"]), c, options)
        return unet_function

    def live_run(self, block_args: dict):
        """The run a hooked block belongs to (None between model calls), counted."""
        if self.run is None or self.run.call is None:
            return None
        self.blocks_handed += 1
        return self.run

    # --- runs ------------------------------------------------------------------
    def _run_at(self, sigma):
        if sigma is None:
            return self.run
        if self.run is not None and self.last_sigma is not None and sigma > self.last_sigma * (1 + 1e-5) + 1e-8:
            self.finish()  # the sigma went up: a new sampling with the same patcher
        if self.run is None:
            self._start()
        if not self.host.scheduled and (self.seen == 0 or sigma < self.last_sigma * (1 - 1e-5)) \
                and self.seen < self.host.num_steps:
            self.run.sigmas[self.seen] = sigma  # the next step of a pass whose schedule was not given
            self.seen += 1
        self.last_sigma = sigma
        return self.run

    def _start(self):
        self.run = RunState(executor_for(self.config, self.adapter, self.host))
        self.seen, self.blocks_handed = 0, 0
        LOG.info("DuCa: %s on %s", self.run.plan, self.adapter.label)

    def finish(self):
        """End the current run (the script calls this after the pass); its stats, or None."""
        run, self.run, self.last_sigma = self.run, None, None
        if run is None:
            return None
        if self.adapter.block_ids and not self.adapter.step_level and not self.blocks_handed \
                and run.method.wraps != STEP_OUTPUTS:
            note = "this host ran no block hooks for the model: nothing was cached (choose method forecast)"
            run.stats.notes.append(note)
            LOG.warning("DuCa: %s", note)
        return end_run(run, self.listeners)[0]
