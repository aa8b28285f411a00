"""The pack beside the host's TorchCompileModel node (inductor, on the CPU), in either order: the
run skips what the uncompiled run skips, gives its output (inductor's own rounding aside), the
hooked blocks run compiled, and nothing compiles again after the first step, in this run or the
next. A U-Net under DeepCache (no block hooks: its model call runs eagerly) keeps its plan too."""
import pytest
import torch

from testbed import models

KW = dict(steps=10, cfg=3.5, height=64, width=64)


def compiled(model):
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    return TorchCompileModel.execute(model, "inductor").result[0]


def graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def sample_counting_graphs(model, conds, **kw):
    """The output, and the graphs compiled so far at the end of every step."""
    per_step = []
    out = models.sample(model, *conds, callback=lambda *_: per_step.append(graphs()), **kw)
    return out, per_step


def flux_configs(core):
    # the balanced forecast's settings without the preset, which computes every step of a run
    # this short (methods.forecast.FEW_STEPS): these still skip
    return {"duca balanced": core.PRESETS["balanced"],
            "forecast balanced": core.FORECAST_PRESETS["balanced"].with_changes(preset=None)}


@pytest.mark.parametrize("order", ["pack, then compile", "compile, then pack"])
@pytest.mark.parametrize("method", ["duca balanced", "forecast balanced"])
def test_a_compiled_flux_skips_as_planned_and_compiles_once(flux, flux_conds, duca, order, method):
    patch, core = duca
    config = flux_configs(core)[method]
    eager = patch.apply_method(flux, config)
    expected = models.sample(eager, *flux_conds, **KW)
    planned = patch.last_stats(eager)
    assert set(planned.timeline) != {"F"}, planned.timeline  # it skips work: the case to check
    torch._dynamo.reset()
    model = compiled(eager) if order.startswith("pack") else patch.apply_method(compiled(flux), config)
    before = graphs()
    out, first = sample_counting_graphs(model, flux_conds, **KW)
    stats = patch.last_stats(model)
    # compiled, what runs outside the blocks is not measured (a FLOP counter would recompile them)
    assert stats.timeline == planned.timeline and stats.block_fraction == planned.block_fraction
    assert not stats.notes
    assert first[0] > before  # the hooked blocks ran compiled
    assert first == [first[0]] * len(first)  # ... and nothing compiled after the first step
    again, second = sample_counting_graphs(model, flux_conds, **KW)
    assert second == [first[0]] * len(second)  # the next run compiles nothing either
    assert torch.equal(again, out)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_an_all_full_plan_under_compile_matches_the_compiled_model(flux, flux_conds, duca):
    patch, core = duca
    torch._dynamo.reset()
    host_compiled = compiled(flux)
    expected = models.sample(host_compiled, *flux_conds, **KW)
    full = patch.apply_method(host_compiled, core.DuCaConfig(plan=core.all_full_plan(KW["steps"])))
    out = models.sample(full, *flux_conds, **KW)
    assert set(patch.last_stats(full).timeline) == {"F"}
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)  # blocks compiled one by one, not as one graph


def test_a_compiled_unet_keeps_deepcaches_plan(unet, conds, duca):
    patch, core = duca
    kw = dict(steps=10, cfg=3.0, height=32, width=32, channels=4)
    eager = patch.apply_method(unet, core.DeepCacheConfig())
    expected = models.sample(eager, *conds, **kw)
    torch._dynamo.reset()
    model = compiled(eager)
    out, first = sample_counting_graphs(model, conds, **kw)
    assert patch.last_stats(model).timeline == patch.last_stats(eager).timeline
    assert first == [first[0]] * len(first)  # the pack's bookkeeping is not traced: no compile per step
    _, second = sample_counting_graphs(model, conds, **kw)
    assert second == [first[0]] * len(second)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)
