"""Whole-step reuse: the unit is the whole model call. On a planned reuse step (AGGRESSIVE) the
model is not called; its output is estimated from its computed steps of the same conditioning
group. Families without block hooks run every method this way; compute is counted in calls."""
from __future__ import annotations

import torch

from ..cache_core.plan import Action, Plan
from .protocol import Executor

OUTPUT = "model_output"  # kept: the model's output at the last computed step


class StepReuse(Executor):
    name = "step-reuse"

    def __init__(self, decision, adapter):
        """`decision`: the executor whose plan (and notes, cache device) this follows; only its
        FULL and AGGRESSIVE steps mean anything for a whole model call."""
        super().__init__(adapter)
        self.decision = decision
        self.name = decision.name
        self.cache_device = decision.cache_device
        self.estimator = decision.estimator

    @property
    def notes(self):
        return self.decision.notes

    def plan(self, num_steps: int) -> Plan:
        plan = self.decision.plan(num_steps)
        if plan.needs_module_cache():  # a model call can't be refreshed token by token: compute it
            plan = plan.replacing(Action.CONSERVATIVE, Action.FULL)
        self.keep_outputs = plan.needs_stack_residual()
        return plan

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

