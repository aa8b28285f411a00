"""Every method behind the one protocol, on every family of the host: the executor the flagship
picks for each config, its plan, and the names the registry gives."""
import pytest
import torch

from testbed import models
from testbed.families import FAMILIES

STEPS = 10


@pytest.fixture(scope="module")
def families(pack):
    from comfyui_duca.adapters import find_adapter
    built = {name: family.build(3) for name, family in FAMILIES.items()}
    built["flux"], built["unet"] = models.flux(seed=0), models.sd_unet_small(seed=1)
    adapters = {name: find_adapter(model.model.diffusion_model) for name, model in built.items()}
    return {name: adapter for name, adapter in adapters.items() if adapter is not None}


def test_each_config_gets_an_executor_of_the_protocol_with_a_plan_per_step(pack, families):
    from comfyui_duca.cache_core import schedule_rules
    from comfyui_duca.methods import (CalibrationConfig, DuCaConfig, ForecastConfig, HostContext, Method,
                                      MethodConfig, ScheduleConfig, executor_for)
    assert {"flux", "unet", "wan21-i2v", "qwen-image", "lumina2"} <= set(families)
    host = HostContext(tuple(float(STEPS - i) for i in range(STEPS + 1)))
    for name, adapter in families.items():
        fora = schedule_rules.fora(STEPS, adapter.schedule_units(), adapter.family, interval=3)
        for config in (ForecastConfig(), DuCaConfig(preset="balanced"), ScheduleConfig(fora), CalibrationConfig()):
            assert isinstance(config, MethodConfig), type(config).__name__
            executor = executor_for(config, adapter, host)
            assert isinstance(executor, Method), (name, type(executor).__name__)
            plan = executor.plan
            assert len(plan) == STEPS and plan.steps[0].action.value == "full", (name, config)


def test_each_adapter_runs_at_its_registry_level(pack, families):
    from comfyui_duca.adapters.registry import BY_NAME
    for name, adapter in families.items():
        assert adapter.level == BY_NAME[adapter.family].level, (name, adapter.family, adapter.level)


def test_the_flagship_picks_the_method_by_family(pack, families):
    from comfyui_duca.methods import DeepCache, DeepCacheConfig, DuCa, DuCaConfig, HostContext, StepReuse, executor_for
    picked = {name: type(executor_for(DuCaConfig(), adapter)) for name, adapter in families.items()}
    assert picked["flux"] is DuCa and picked["qwen-image"] is DuCa
    assert picked["unet"] is DeepCache and picked["lumina2"] is StepReuse
    # a step-level family's plan has no conservative step: a whole model call can't refresh tokens
    host = HostContext(tuple(float(28 - i) for i in range(29)))
    assert "C" not in executor_for(DuCaConfig(), families["lumina2"], host).plan.timeline
    with pytest.raises(ValueError, match="model: DeepCache needs a U-Net"):
        executor_for(DeepCacheConfig(), families["flux"])


def test_a_run_reports_the_registry_name_of_its_family(pack, families):
    from comfyui_duca.adapters.registry import BY_NAME
    from comfyui_duca.glue.patch import apply_method, last_stats
    from comfyui_duca.methods import PRESETS
    model = models.flux(seed=0)
    patched = apply_method(model, PRESETS["balanced"])
    models.sample(patched, models.flux_conditioning(model=model, seed=1), steps=6, height=32, width=32)
    stats = last_stats(patched)
    assert stats.family == "flux" and stats.family in BY_NAME and stats.to_dict()["family"] == "flux"
    assert stats.level == BY_NAME["flux"].level


def test_an_estimator_changes_what_skipped_steps_hand_on_and_keeps_its_points(pack):
    """On a whole-step family: the estimator decides what a skipped call returns; a forecast keeps
    order + 1 outputs per conditioning (cache bytes say so); an all-full plan is untouched by it."""
    from comfyui_duca.cache_core import all_full_plan, every_kth_step_plan
    from comfyui_duca.glue.patch import apply_method, last_stats
    from comfyui_duca.methods import DuCaConfig
    family = FAMILIES["lumina2"]
    model = family.build(3)
    conds = family.conditioning(1), family.negative(2)

    def sample(m):
        return models.sample(m, *conds, steps=STEPS, cfg=4.0, latent=family.latent(1))
    plan = every_kth_step_plan(STEPS, 3, first_full_steps=1)
    outs, cache = {}, {}
    for estimator in ("reuse", "taylor1", "taylor2"):
        patched = apply_method(model, DuCaConfig(plan=plan, estimator=estimator))
        outs[estimator] = sample(patched)
        cache[estimator] = last_stats(patched).peak_cache_bytes
        full = apply_method(model, DuCaConfig(plan=all_full_plan(STEPS), estimator=estimator))
        assert torch.equal(sample(full), sample(model)), estimator
    assert not torch.equal(outs["reuse"], outs["taylor1"]) and not torch.equal(outs["taylor1"], outs["taylor2"])
    assert cache["taylor1"] == 2 * cache["reuse"] and cache["taylor2"] == 3 * cache["reuse"] > 0
