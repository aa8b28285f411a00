"""Operator calls of DuCa's steps on the host's Flux (a torch dispatch-mode count, as
bench/step_times.py --ops reports them): a conservative step's blocks issue fewer calls than a
full step's, and an aggressive step runs none of the blocks' operators."""
from torch.utils._python_dispatch import TorchDispatchMode

from testbed import models


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def per_step(model, conds):
    marks = []
    with Count() as count:
        models.sample(model, *conds, steps=10, cfg=3.5, height=64, width=64,
                      callback=lambda *_: marks.append(count.calls))
    return [b - a for a, b in zip([0] + marks, marks)]


def test_a_conservative_block_issues_fewer_operator_calls_than_a_full_one(flux, flux_conds, duca):
    patch, core = duca
    accelerated = patch.apply_method(flux, core.PRESETS["balanced"])
    counts = per_step(accelerated, flux_conds)
    timeline = patch.last_stats(accelerated).timeline
    by_action = {a: [n for n, t in zip(counts, timeline) if t == a] for a in "FCA"}
    # the cheapest full step against the dearest conservative and aggressive ones
    full, conservative, aggressive = min(by_action["F"]), max(by_action["C"]), max(by_action["A"])
    assert aggressive < conservative < full
    uncached = per_step(flux, flux_conds)
    assert aggressive < min(uncached)  # the blocks' operators are what an aggressive step leaves out
