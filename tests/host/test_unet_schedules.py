"""Schedules and Block Caching calibration on ComfyUI's U-Net, through the host's own forward
and samplers. Units are the U-Net's transformer layers ("transformer.<i>", run order); the
small U-Nets have 7 (2 down, 1 middle, 4 up).
"""
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from testbed import models

STEPS = 9
KW = dict(steps=STEPS, channels=4, height=128, width=128)


@pytest.fixture(scope="module")
def sched(pack):
    from comfyui_duca.cache_core import schedule, schedule_rules
    return schedule, schedule_rules


def adapter_of(model):
    from comfyui_duca.adapters import find_adapter
    return find_adapter(model.model.diffusion_model)


def table_schedule(sched, model, rows, method="test"):
    adapter = adapter_of(model)
    return sched[0].Schedule(torch.tensor(rows, dtype=torch.uint8), adapter.schedule_units(), "unet", method)


def deepcache_tests():
    """The ControlNet helpers of test_deepcache.py (test modules are not importable by name)."""
    spec = importlib.util.spec_from_file_location("unet_deepcache_tests", Path(__file__).parent / "test_deepcache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distance(a, b):
    return float((a - b).norm() / b.norm())


def counting_units(model):
    """Hooks on an inner layer of each transformer unit: they fire only when the unit really
    computes (a hook on a stood-in module itself would still fire)."""
    counts, handles = [], []
    for i, unit in enumerate(adapter_of(model).units):
        counts.append(0)
        handles.append(unit.proj_in.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1)))
    return counts, handles


def test_units_are_the_transformer_layers_in_run_order(pack, unet):
    adapter = adapter_of(unet)
    dm = unet.model.diffusion_model
    assert adapter.family == "unet"  # the name schedules carry, whatever the variant
    assert adapter.schedule_units() == [f"transformer.{i}" for i in range(7)]
    order = []
    handles = [u.register_forward_pre_hook(lambda m, _a: order.append(m)) for u in adapter.units]
    try:
        dm(torch.randn(1, 4, 16, 16), torch.tensor([500.0]), context=torch.randn(1, 8, 64))
    finally:
        for h in handles:
            h.remove()
    assert order == adapter.units and type(order[0]).__name__ == "SpatialTransformer"


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (3.0, 2)])
def test_all_compute_schedule_is_bit_identical(pack, duca, sched, unet, conds, cfg, batch):
    patch, core = duca
    kw = dict(KW, cfg=cfg, batch=batch)
    reference = models.sample(unet, *conds, **kw)
    schedule = sched[1].fora(STEPS, adapter_of(unet).schedule_units(), "unet", interval=1)
    model = patch.apply_method(unet, core.ScheduleConfig(schedule))
    assert torch.equal(models.sample(model, *conds, **kw), reference)
    stats = patch.last_stats(model)
    assert stats.method == "fora" and stats.timeline == "F" * STEPS and stats.compute_fraction == 1.0


def test_reuse_on_the_same_input_reproduces_the_full_call(pack, duca, sched, unet):
    """A call reusing every unit, on the input of the computed call before it: each unit hands
    on input + kept residual, so the output is the computed one (to rounding)."""
    _, core = duca
    from comfyui_duca.methods import HostContext, RunState, executor_for
    dm = unet.model.diffusion_model
    adapter = adapter_of(unet)
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([700.0, 700.0]), torch.randn(2, 8, 64)
    schedule = table_schedule(sched, unet, [[0] * 7, [2] * 7])
    run = RunState(executor_for(core.ScheduleConfig(schedule), adapter, HostContext((2.0, 1.0, 0.0))))
    counts, handles = counting_units(unet)
    outs = []
    try:
        for sigma, xi in ((2.0, x), (1.0, x), (1.0, x * 0.5)):
            options = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0, 1]}
            call = run.begin_call(xi, options)
            outs.append(run.method.on_call(run, call, lambda: dm(xi, t, context=context, transformer_options=options)))
            run.end_call(call)
    finally:
        for h in handles:
            h.remove()
    assert run.stats.timeline == "FP" and counts == [1] * 7  # the two reuse calls computed no unit
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs[2], dm(x * 0.5, t, context=context, transformer_options={}), atol=1e-5)


def test_units_computed_as_scheduled_and_flops_counted_per_unit(pack, duca, sched, unet, conds):
    patch, core = duca
    rows = [[0] * 7,
            [2, 0, 2, 0, 2, 0, 2],
            [2, 2, 2, 2, 2, 2, 2],
            [0, 1, 0, 1, 0, 1, 0],   # reuse-attention cells compute on the U-Net
            [2, 2, 0, 0, 2, 2, 0],
            [0] * 7,
            [2, 2, 2, 0, 0, 0, 0],
            [0, 0, 0, 2, 2, 2, 2],
            [2, 0, 0, 0, 0, 0, 2]]
    schedule = table_schedule(sched, unet, rows)
    model = patch.apply_method(unet, core.ScheduleConfig(schedule))
    counts, handles = counting_units(unet)
    try:
        out = models.sample(model, *conds, cfg=3.0, **KW)  # cond and uncond in one call a step
    finally:
        for h in handles:
            h.remove()
    stats = patch.last_stats(model)
    assert stats.timeline == "FPPPPFPPP" and stats.level == "block"
    assert counts == [sum(row[u] != 2 for row in rows) for u in range(7)]
    # FLOPs: a step saves exactly the FLOPs of the units it reuses (measured apart, same shapes)
    adapter, counted = adapter_of(unet), {}
    flop_handles = adapter.flop_hooks(adapter.named_units(), counted)
    try:
        unet.model.diffusion_model(torch.randn(2, 4, 16, 16), torch.tensor([500.0] * 2),
                                   context=torch.randn(2, 8, 64))
    finally:
        for h in flop_handles:
            h.remove()
    unit_flops = [counted[("transformer", u)] for u in range(7)]
    assert min(unit_flops) > 0
    for step, row in enumerate(rows):
        record = stats.steps[step]
        saved = sum(f for f, cell in zip(unit_flops, row) if cell == 2)
        assert record.compute_full - record.compute_done == pytest.approx(saved, rel=1e-9), step
    assert 0.5 < stats.compute_fraction < 1.0 and torch.isfinite(out).all()


def test_fora_lowers_compute_and_stays_close(pack, duca, sched, trained):
    patch, core = duca
    model, positive, negative = trained
    kw = dict(KW, steps=20, cfg=3.0)
    reference = models.sample(model, positive, negative, **kw)
    units = adapter_of(model).schedule_units()
    model_fora = patch.apply_method(model, core.ScheduleConfig(sched[1].fora(20, units, "unet", interval=3)))
    out = models.sample(model_fora, positive, negative, **kw)
    stats = patch.last_stats(model_fora)
    assert stats.timeline == "F" + "PPF" * 6 + "P"
    assert stats.compute_fraction < 0.85
    other_seed = models.sample(model, positive, negative, **dict(kw, seed=1))
    # measured 0.13 on this class (0.06-0.07 on others): reusing every transformer layer for two
    # steps of 20 moves the result far less than another seed does
    assert 0 < distance(out, reference) < 0.2 * distance(other_seed, reference)


def test_calibration_gives_a_profile_and_block_caching_runs_from_it(pack, duca, sched, trained):
    patch, core = duca
    model, positive, negative = trained
    kw = dict(KW, steps=20, cfg=3.0)
    reference = models.sample(model, positive, negative, **kw)
    calibrating = patch.apply_method(model, core.CalibrationConfig())
    assert torch.equal(models.sample(calibrating, positive, negative, **kw), reference)  # computes everything
    assert patch.last_stats(calibrating).compute_fraction == 1.0
    change = patch.last_result(calibrating).relative_change()
    assert change.shape == (20, 7)
    assert (change[0] == 0).all() and (change[1:] > 0).all() and torch.isfinite(change).all()
    units = adapter_of(model).schedule_units()
    other_seed = models.sample(model, positive, negative, **dict(kw, seed=1))
    fractions, distances = [], []
    for threshold in (0.05, 0.1):
        schedule = sched[1].block_caching(change, units, "unet", threshold)
        cached = patch.apply_method(model, core.ScheduleConfig(schedule))
        out = models.sample(cached, positive, negative, **kw)
        stats = patch.last_stats(cached)
        assert stats.method == "block-caching" and "P" in stats.timeline
        fractions.append(stats.compute_fraction)
        distances.append(distance(out, reference))
    # a higher threshold reuses more and strays further, still far closer than another seed
    assert 1.0 > fractions[0] > fractions[1]
    assert 0 < distances[0] < distances[1] < 0.15 * distance(other_seed, reference)


def test_controlnet_still_changes_the_output_on_reuse_steps(pack, duca, sched, unet, conds):
    patch, core = duca
    controlnet_for, with_control = deepcache_tests().controlnet_for, deepcache_tests().with_control
    control = controlnet_for(unet)
    hint = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    positive, negative = conds
    kw = dict(KW, cfg=3.0)
    # the first 5 steps computed, every unit reused after: control only over the reused steps
    schedule = table_schedule(sched, unet, [[0] * 7] * 5 + [[2] * 7] * 4)
    tail = patch.apply_method(unet, core.ScheduleConfig(schedule))
    late = with_control(positive, control, hint, (0.65, 1.0))
    without, with_late = models.sample(tail, positive, negative, **kw), models.sample(tail, late, negative, **kw)
    assert patch.last_stats(tail).timeline == "FFFFFPPPP"
    assert distance(with_late, without) > 1e-4
    uncached_late = models.sample(unet, late, negative, **kw)
    assert distance(with_late, uncached_late) < 0.5 * distance(without, uncached_late)


def test_a_schedule_for_another_model_is_refused_at_apply_time(pack, duca, sched, unet, flux):
    patch, core = duca
    schedule_module, rules = sched
    units = adapter_of(unet).schedule_units()
    with pytest.raises(schedule_module.ScheduleMismatch, match="made for a flux model"):
        patch.apply_method(unet, core.ScheduleConfig(rules.fora(STEPS, units, "flux")))
    with pytest.raises(schedule_module.ScheduleMismatch, match="covers 6 blocks"):
        patch.apply_method(unet, core.ScheduleConfig(rules.fora(STEPS, units[:6], "unet")))
    # and a U-Net schedule on a Flux: its units are double/single blocks
    with pytest.raises(schedule_module.ScheduleMismatch, match="made for a unet model"):
        patch.apply_method(flux, core.ScheduleConfig(rules.fora(STEPS, units, "unet")))


def test_a_failing_unit_stand_in_computes_and_switches_caching_off(pack, duca, sched, unet, conds, monkeypatch,
                                                                    caplog):
    """The first reused unit's stand-in fails: it computes, and so does everything after it,
    so a schedule whose first reuse fails gives the uncached output."""
    patch, core = duca
    from comfyui_duca.methods.schedules import UNIT_RESIDUAL
    kw = dict(KW, cfg=3.0)
    reference = models.sample(unet, *conds, **kw)
    from comfyui_duca.cache_core.store import CacheStore
    original_get = CacheStore.get

    def broken_get(self, key, name, device=None):
        if isinstance(name, tuple) and name[0] == UNIT_RESIDUAL:
            raise RuntimeError("cache lost")
        return original_get(self, key, name, device)
    monkeypatch.setattr(CacheStore, "get", broken_get)
    schedule = sched[1].fora(STEPS, adapter_of(unet).schedule_units(), "unet", interval=2)
    model = patch.apply_method(unet, core.ScheduleConfig(schedule))
    with caplog.at_level(logging.ERROR, logger="comfyui-duca"):
        out = models.sample(model, *conds, **kw)
    stats = patch.last_stats(model)
    assert torch.equal(out, reference) and stats.compute_fraction == 1.0
    assert [n for n in stats.notes if "caching switched off" in n] == ["caching switched off at step 1: "
                                                                       "RuntimeError('cache lost')"]
    assert len([r for r in caplog.records if "reusing features failed" in r.getMessage()]) == 1


def test_bench_every_k_reuses_whole_model_calls_on_a_u_net(pack, unet, conds):
    """The harness's every-k baseline on a U-Net: the model call's output is reused on the
    steps in between (no call reaches the model), not DeepCache."""
    from bench import methods
    method = next(m for m in methods.every_k(unet, STEPS, ks=(3,)))
    assert method.supported and method.counted_by == "calls" and method.settings["level"] == "step"
    counter = methods.CallCounter(unet.model.diffusion_model)
    per_step = []
    out = models.sample(method.model, *conds, cfg=3.0, callback=lambda *_: per_step.append(counter.count), **KW)
    computed = [b > a for a, b in zip([0] + per_step, per_step)]
    assert computed == [True, True, False, False, True, False, False, True, False]
    reference = models.sample(unet, *conds, cfg=3.0, **KW)
    assert 0 < distance(out, reference) < 0.5
