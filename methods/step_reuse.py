"""Whole-step reuse: the unit is the whole model call. On a planned reuse step (AGGRESSIVE) the
model is not called; its output is estimated from its computed steps of the same conditioning
group. Families without block hooks run every method this way; compute is counted in calls."""
from __future__ import annotations

import torch

from ..cache_core.plan import Action
from .protocol import Executor

OUTPUT = "model_output"  # kept: the model's output at the last computed step


def whole_calls(method):
    """`method` itself where the model's blocks are hooked; else its plan over whole model calls."""
    return StepReuse(method) if method.adapter.step_level else method


class StepReuse(Executor):
    name = "step-reuse"

    def __init__(self, decision):
        """`decision`: the executor whose plan (and notes, cache device) this follows; only its
        FULL and AGGRESSIVE steps mean anything for a whole model call."""
        super().__init__(decision.adapter, decision.host)
        self.decision = decision
        self.name = decision.name
        self.cache_device = decision.cache_device
        self.estimator = decision.estimator
        self.notes = decision.notes
        plan = decision.plan
        if plan.needs_module_cache():  # a model call can't be refreshed token by token: compute it
            plan = plan.replacing(Action.CONSERVATIVE, Action.FULL)
        self.plan = plan
        self.keep_outputs = plan.needs_stack_residual()

    def on_call(self, run, call, compute):
        stats = run.stats.at(call.step)
        stats.compute_full += 1
        if call.action is Action.AGGRESSIVE and not run.disabled and run.has_kept(call, OUTPUT):
            return run.estimated(call, OUTPUT, device=call.device)
        stats.compute_done += 1
        output = compute()
        if self.keep_outputs and isinstance(output, torch.Tensor):
            run.keep_point(call, OUTPUT, output)
        return output

