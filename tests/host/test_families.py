"""Every DiT family of the host (testbed/families.py), unpatched and through apply_method.

For each family, at cfg 1 (batch 1) and cfg 4 (batch 2, cond + uncond):
- the unpatched model samples finite output that depends on the seed;
- an all-full plan is bit-identical to it, or the family is passed through: the same
  model object, one warning naming its class, the same output;
- supported families: the balanced preset reuses (0 < compute fraction < 1), the host's
  blocks run exactly on the steps the run says it computed, and the output stays near.

The level each family runs at is part of the test ids (`ltxv-token-wise-cfg4`,
`lumina2-step-cfg1`), so a family that silently falls back shows up there.
"""
import logging

import pytest
import torch

from testbed import host, models
from testbed.families import FAMILIES

STEPS = 6
MODEL_SEED = 3
MODES = {"cfg1": (1.0, 1), "cfg4": (4.0, 2)}  # cfg, latent batch

host.load_pack()   # the adapters decide the ids below, so the pack loads at collection
from comfyui_duca.adapters import find_adapter  # noqa: E402

MODELS = {name: family.build(MODEL_SEED) for name, family in FAMILIES.items()}
LEVELS = {name: getattr(find_adapter(model.model.diffusion_model), "level", None) for name, model in MODELS.items()}
SUPPORTED = {name for name, level in LEVELS.items() if level is not None}


# Families the pack accelerated when these tests were written: none may fall back to passing through.
SUPPORTED_BEFORE = {"ltxv", "qwen-image", "qwen-image-edit", "mochi", "wan21-i2v", "wan22-5b"}


def family_id(name):
    return f"{name}-{LEVELS[name] or 'passthrough'}"


ALL = [pytest.param(name, mode, id=f"{family_id(name)}-{mode}") for name in FAMILIES for mode in MODES]
ACCELERATED = [pytest.param(name, mode, id=f"{family_id(name)}-{mode}") for name in sorted(SUPPORTED) for mode in MODES]

# What each family's forward hands a patches_replace["dit"] block in ComfyUI 0.3.75:
# {kind: (keys of args, keys of the original block's output)}; None: no block hook. Newer hosts add
# NEWER_ARGS to LTXV's (None on these models: LTX-2's features), left out of what is compared.
NEWER_ARGS = ("self_attention_mask", "prompt_timestep")
PATCH_ARGS = {
    "ltxv": {"double_block": ({"img", "txt", "attention_mask", "vec", "pe", "transformer_options"}, {"img"})},
    "qwen-image": {"double_block": ({"img", "txt", "vec", "pe", "transformer_options"}, {"img", "txt"})},
    "qwen-image-edit": {"double_block": ({"img", "txt", "vec", "pe", "transformer_options"}, {"img", "txt"})},
    "mochi": {"double_block": ({"img", "txt", "vec", "rope_cos", "rope_sin", "num_tokens", "transformer_options"},
                               {"img", "txt"})},
    "hunyuan-video": {
        "double_block": ({"img", "txt", "vec", "pe", "attention_mask", "modulation_dims_img",
                          "modulation_dims_txt", "transformer_options"}, {"img", "txt"}),
        "single_block": ({"img", "vec", "pe", "attention_mask", "modulation_dims", "transformer_options"}, {"img"})},
    "auraflow": {"double_block": ({"img", "txt", "vec", "transformer_options"}, {"img", "txt"}),
                 "single_block": ({"img", "vec", "transformer_options"}, {"img"})},
    "wan21-i2v": {"double_block": ({"img", "txt", "vec", "pe", "transformer_options"}, {"img"})},
    "wan22-5b": {"double_block": ({"img", "txt", "vec", "pe", "transformer_options"}, {"img"})},
    "lumina2": None, "z-image": None, "hidream": None, "cosmos-predict2": None,
}


class Counts:
    """Model calls and block forward calls per sampling step (forward hooks on the host's
    diffusion model and blocks; the sampler's callback closes each step)."""

    def __init__(self, model, family):
        self.model_calls, self.block_calls = [], []
        self._calls = self._blocks = 0
        dm = model.model.diffusion_model
        self.handles = [dm.register_forward_hook(lambda *_: self._add_call())]
        self.handles += [b.register_forward_hook(lambda *_: self._add_block()) for b in family.block_modules(model)]

    def _add_call(self):
        self._calls += 1

    def _add_block(self):
        self._blocks += 1

    def step_done(self, *_):
        self.model_calls.append(self._calls)
        self.block_calls.append(self._blocks)
        self._calls = self._blocks = 0

    def remove(self):
        for h in self.handles:
            h.remove()


def run(name, model, mode, seed=0, counts=None, steps=STEPS):
    family = FAMILIES[name]
    cfg, batch = MODES[mode]
    return models.sample(model, family.conditioning(1), family.negative(2), steps=steps, cfg=cfg, seed=seed,
                         latent=family.latent(batch), callback=counts.step_done if counts else None)


def counted_run(name, model, mode, steps=STEPS):
    counts = Counts(MODELS[name], FAMILIES[name])
    try:
        out = run(name, model, mode, counts=counts, steps=steps)
    finally:
        counts.remove()
    assert len(counts.model_calls) == steps
    return out, counts


@pytest.fixture(scope="module", autouse=True)
def small_models(one_thread):
    """One thread for these small models (conftest.py); the models freed while the host is still
    loaded, not at interpreter exit."""
    yield
    MODELS.clear()


@pytest.fixture(scope="module")
def reference(pack):
    """Unpatched output (seed 0) and model calls per step, per family and mode."""
    cache = {}

    def get(name, mode):
        if (name, mode) not in cache:
            cache[name, mode] = counted_run(name, MODELS[name], mode)
        return cache[name, mode]
    return get


def relative_l2(a, b):
    return float((a - b).norm() / b.norm())


def test_families_supported_before_are_still_supported():
    assert SUPPORTED_BEFORE <= SUPPORTED, f"now passed through: {sorted(SUPPORTED_BEFORE - SUPPORTED)}"


@pytest.mark.parametrize("name", [pytest.param(n, id=family_id(n)) for n in FAMILIES])
def test_family_is_the_hosts_class_and_its_block_hooks_are_as_documented(pack, name):
    import comfy.supported_models
    family, model = FAMILIES[name], MODELS[name]
    dm = model.model.diffusion_model
    assert type(model.model.model_config) is getattr(comfy.supported_models, family.config_class)
    assert type(dm).__name__ == family.model_class
    for attribute, block_class in family.blocks:
        blocks = getattr(dm, attribute)
        assert len(blocks) >= 1 and {type(b).__name__ for b in blocks} == {block_class}
    assert 10_000 < sum(p.numel() for p in dm.parameters()) < 5_000_000  # small, but real

    seen, calls = {}, {}

    def probe(kind):
        def patch(args, extra):
            out = extra["original_block"](args)
            unused = {name for name in NEWER_ARGS if name in args and args[name] is None}
            seen.setdefault(kind, (set(args) - unused, set(out)))
            calls[kind] = calls.get(kind, 0) + 1
            return out
        return patch
    probed = model.clone()
    for kind in ("double_block", "single_block"):
        for i in range(max(len(getattr(dm, a)) for a, _ in family.blocks)):
            probed.set_model_patch_replace(probe(kind), "dit", kind, i)
    out = models.sample(probed, family.conditioning(1), family.negative(2), steps=1, cfg=1.0, latent=family.latent(1))
    assert torch.isfinite(out).all()
    assert (seen or None) == PATCH_ARGS[name]
    assert family.block_hook == bool(seen)
    assert sum(calls.values()) == (len(family.block_modules(model)) if seen else 0)


@pytest.mark.parametrize("name,mode", ALL)
def test_unpatched_sampling_is_finite_and_depends_on_the_seed(reference, name, mode):
    out, counts = reference(name, mode)
    family = FAMILIES[name]
    assert out.shape == family.latent(MODES[mode][1]).shape
    assert torch.isfinite(out).all()
    other = run(name, MODELS[name], mode, seed=1)
    assert torch.isfinite(other).all()
    assert relative_l2(other, out) > 1e-2
    # every step calls the model the same number of times and runs every block each time
    calls = counts.model_calls[0]
    assert calls >= 1 and counts.model_calls == [calls] * STEPS
    assert counts.block_calls == [calls * len(family.block_modules(MODELS[name]))] * STEPS


@pytest.mark.parametrize("name,mode", ALL)
def test_all_full_plan_is_bit_identical_or_passed_through_with_one_warning(reference, duca, caplog, name, mode):
    patch, core = duca
    model = MODELS[name]
    expected, _ = reference(name, mode)
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        full = patch.apply_method(model, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    warnings = [r for r in caplog.records if r.name == "comfyui-duca" and r.levelno >= logging.WARNING]
    if name in SUPPORTED:
        assert full is not model
        assert warnings == []
        out = run(name, full, mode)
        stats = patch.last_stats(full)
        assert stats is not None and stats.level == LEVELS[name]
        assert stats.timeline == "F" * STEPS and stats.compute_fraction == 1.0
    else:
        assert full is model
        assert len(warnings) == 1
        assert type(model.model.diffusion_model).__name__ in warnings[0].getMessage()
        out = run(name, full, mode)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name,mode", ACCELERATED)
def test_balanced_reuses_and_runs_the_blocks_the_plan_computes(reference, duca, name, mode):
    patch, core = duca
    family, model = FAMILIES[name], MODELS[name]
    expected, reference_counts = reference(name, mode)
    config = core.PRESETS["balanced"]
    plan = config.plan_for(STEPS).timeline
    balanced = patch.apply_method(model, config)
    out, counts = counted_run(name, balanced, mode)

    stats = patch.last_stats(balanced)
    assert stats.level == LEVELS[name]
    assert 0 < stats.compute_fraction < 1
    timeline = stats.timeline
    assert len(timeline) == STEPS and set(timeline) <= {"F", "C", "A"}
    # aggressive steps are the plan's at every level; the rest compute (fully or token-wise)
    assert [i for i, a in enumerate(timeline) if a == "A"] == [i for i, a in enumerate(plan) if a == "A"]
    assert "A" in timeline

    # the host's blocks: all of them on full steps, none on aggressive ones, per model call
    calls = reference_counts.model_calls[0]
    assert counts.model_calls == [calls] * STEPS
    stack = calls * len(family.block_modules(model))
    for action, ran in zip(timeline, counts.block_calls):
        if action == "F":
            assert ran == stack
        elif action == "A":
            assert ran == 0
    # conservative steps run the block forwards (units stood in) or none (parts run directly)
    conservative = {ran for action, ran in zip(timeline, counts.block_calls) if action == "C"}
    assert conservative <= {0, stack} and len(conservative) <= 1
    computed = timeline.count("F") + (timeline.count("C") if conservative == {stack} else 0)
    assert sum(counts.block_calls) == computed * len(family.block_modules(model)) * calls

    assert torch.isfinite(out).all()
    assert 1e-6 < relative_l2(out, expected) < 0.3


@pytest.mark.parametrize("name,mode", ALL)
def test_a_forecast_that_computes_every_step_is_bit_identical_or_passed_through(reference, duca, name, mode):
    patch, _ = duca
    from comfyui_duca.methods import ForecastConfig
    model = MODELS[name]
    expected, _ = reference(name, mode)
    full = patch.apply_method(model, ForecastConfig(budget=1.0))
    assert (full is not model) == (name in SUPPORTED)
    assert torch.equal(run(name, full, mode), expected)


PRESET_STEPS = 28  # the setting: block compute counted over a 28-step run


@pytest.mark.parametrize("name,mode", ACCELERATED)
def test_balanced_runs_at_most_0_40_of_the_blocks(duca, name, mode):
    """Blocks counted by hooks on the host's modules over a 28-step run, against the uncached run.
    (Fidelity against every-k reuse is the bench's: these models have random weights.)"""
    model = MODELS[name]
    expected, full_counts = counted_run(name, model, mode, PRESET_STEPS)
    out, counts = counted_run(name, host.node("DuCaAccelerate").execute(model, "balanced").result[0], mode,
                              PRESET_STEPS)
    fraction = sum(counts.block_calls) / sum(full_counts.block_calls)
    assert 0.2 < fraction <= 0.40
    assert torch.isfinite(out).all() and 1e-7 < relative_l2(out, expected) < 0.3


class AuraUnits:
    """What the host's AuraFlow layers really computed in one step: calls of each layer's
    attention (its first projection) and the (batch, tokens) each MLP ran on."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        mlps = [(("double_block", i, "txt"), b.mlpC) for i, b in enumerate(dm.double_layers)]
        mlps += [(("double_block", i, "img"), b.mlpX) for i, b in enumerate(dm.double_layers)]
        mlps += [(("single_block", i, "seq"), b.mlp) for i, b in enumerate(dm.single_layers)]
        layers = list(dm.double_layers) + list(dm.single_layers)
        self.steps, self._attention, self._rows = [], 0, {}
        self.handles = [b.attn.w1q.register_forward_hook(self._count) for b in layers]
        self.handles += [m.c_fc1.register_forward_hook(self._rows_of(name)) for name, m in mlps]

    def _count(self, *_):
        self._attention += 1

    def _rows_of(self, name):
        return lambda _m, args, _out: self._rows.setdefault(name, []).append(tuple(args[0].shape[:2]))

    def step_done(self, *_):
        self.steps.append((self._attention, self._rows))
        self._attention, self._rows = 0, {}

    def remove(self):
        for h in self.handles:
            h.remove()


def test_auraflow_is_token_wise_over_its_double_and_single_layers():
    assert LEVELS["auraflow"] == "token-wise"


@pytest.mark.parametrize("mode", list(MODES))
def test_auraflow_conservative_steps_reuse_attention_and_refresh_the_planned_tokens(duca, mode):
    """Text (register tokens + prompt) and image streams of the double layers and the
    [text; image] sequence of the single layers each refresh int(ratio * tokens) tokens,
    with ToCa's per-layer ratio; attention never runs on conservative or aggressive steps."""
    patch, core = duca
    family, model = FAMILIES["auraflow"], MODELS["auraflow"]
    steps, config = 10, core.DuCaConfig(interval=4, refresh_ratio=0.4, first_full_steps=2)
    plan = config.plan_for(steps)
    accelerated = patch.apply_method(model, config)
    units = AuraUnits(model)
    cfg, batch = MODES[mode]
    try:
        out = models.sample(accelerated, family.conditioning(1), family.negative(2), steps=steps, cfg=cfg,
                            latent=family.latent(batch), callback=units.step_done)
    finally:
        units.remove()
    assert torch.isfinite(out).all()
    assert patch.last_stats(accelerated).timeline == plan.timeline and "C" in plan.timeline
    depth = len(family.block_modules(model))
    doubles = len(model.model.diffusion_model.double_layers)
    full_rows = units.steps[0][1]   # (batch, tokens) per MLP on a full step
    assert {name: shape[0][1] for name, shape in full_rows.items()} == {
        ("double_block", 0, "txt"): 8 + 8, ("double_block", 0, "img"): 16,
        ("single_block", 0, "seq"): 32, ("single_block", 1, "seq"): 32}
    for step, (attention, rows) in zip(plan, units.steps):
        if step.action is core.Action.FULL:
            assert attention == depth and rows == full_rows
        elif step.action is core.Action.AGGRESSIVE:
            assert attention == 0 and rows == {}
        else:
            assert attention == 0
            expected = {}
            for (kind, index, stream), [(batch_rows, tokens)] in full_rows.items():
                position = index if kind == "double_block" else doubles + index  # double layers run first
                ratio = core.layer_refresh_ratio(step.refresh_ratio, position, depth, 1.0, config.layer_weight)
                if int(ratio * tokens):  # an MLP with no token to refresh is not called
                    expected[kind, index, stream] = [(batch_rows, int(ratio * tokens))]
            assert rows == expected


@pytest.mark.parametrize("preset", ["quality", "balanced", "fast"])
def test_the_accelerate_node_runs_auraflow_with_its_family_settings(pack, duca, preset):
    """A DuCa preset picked on the node: the plan is the preset with AuraFlow's measured settings
    (the family registry's), counted in the steps of the run."""
    patch, core = duca
    from comfyui_duca.adapters.registry import BY_NAME
    measured = BY_NAME["auraflow"].defaults
    family, model = FAMILIES["auraflow"], MODELS["auraflow"]
    (accelerated,) = host.node("DuCaAccelerate").execute(model, "duca " + preset).result
    steps = 20
    outs = [models.sample(m, family.conditioning(1), family.negative(2), steps=steps, cfg=4.0,
                          latent=family.latent(1)) for m in (model, accelerated)]
    expected = core.PRESETS[preset].with_changes(**measured[preset]).plan_for(steps)
    assert measured[preset]  # measured, not missing
    assert patch.last_stats(accelerated).timeline == expected.timeline
    assert 0 < patch.last_stats(accelerated).compute_fraction < 1
    assert 1e-7 < relative_l2(outs[1], outs[0]) < 0.3
