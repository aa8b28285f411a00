"""DeepCache on ComfyUI's U-Net (UNetModel), through the host's own forward and samplers.

Small U-Nets of the real class: 4 input blocks, a middle block, 4 output blocks
(SD1.5 has 12 / 1 / 12), 16x16x4 latents.
"""
import pytest
import torch

from testbed import host, models

STEPS = 9
KW = dict(steps=STEPS, channels=4, height=128, width=128)


def blocks_of(model):
    """The host's blocks by name, in the order `_forward` runs them."""
    dm = model.model.diffusion_model
    return ([(("input", i), b) for i, b in enumerate(dm.input_blocks)] + [(("middle", 0), dm.middle_block)]
            + [(("output", j), b) for j, b in enumerate(dm.output_blocks)])


def first_weighted_layer(block):
    """An inner conv / linear of the block: it runs only when the block really computes
    (a forward hook on a stood-in module would still fire)."""
    return next(m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def sample_counting(model, base, positive, negative, **kw):
    """Sample while hooks on each block's first inner layer count the block's real runs."""
    counts, handles = {}, []
    for name, block in blocks_of(base):
        counts[name] = 0
        handles.append(first_weighted_layer(block).register_forward_hook(
            lambda *_, name=name: counts.__setitem__(name, counts[name] + 1)))
    try:
        return models.sample(model, positive, negative, **kw), counts
    finally:
        for h in handles:
            h.remove()


def distance(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (3.0, 2)])
def test_all_full_plan_is_bit_identical(pack, duca, unet, conds, cfg, batch):
    patch, core = duca
    kw = dict(KW, cfg=cfg, batch=batch)
    reference = models.sample(unet, *conds, **kw)
    assert torch.isfinite(reference).all()
    full = patch.apply_method(unet, core.DeepCacheConfig(plan=core.all_full_plan(STEPS)))
    assert full is not unet  # recognised, not passed through
    assert torch.equal(models.sample(full, *conds, **kw), reference)
    stats = patch.last_stats(full)
    assert stats.level == "deepcache" and stats.timeline == "F" * STEPS and stats.compute_fraction == 1.0


@pytest.mark.parametrize("branch", [0, 2])
def test_blocks_computed_as_planned(pack, duca, unet, conds, branch):
    patch, core = duca
    model = patch.apply_method(unet, core.DeepCacheConfig(interval=3, branch=branch))
    out, counts = sample_counting(model, unet, *conds, cfg=3.0, **KW)  # cond and uncond in one call
    stats = patch.last_stats(model)
    assert stats.timeline == "FAAFAAFAA"
    full, reused = stats.timeline.count("F"), stats.timeline.count("A")
    n = len(unet.model.diffusion_model.input_blocks)
    for (kind, i), count in counts.items():
        runs_on_reuse = (kind == "input" and i <= branch) or (kind == "output" and i >= n - 1 - branch)
        assert count == full + (reused if runs_on_reuse else 0), (kind, i)
    # FLOPs: a reuse step does the computed blocks' share, every reuse step the same
    records = [stats.steps[i] for i in range(STEPS)]
    assert all(r.compute_done == r.compute_full > 0 for r in records if r.action == "full")
    shares = {round(r.compute_done / r.compute_full, 9) for r in records if r.action == "aggressive"}
    assert len(shares) == 1 and 0 < shares.pop() < 0.9
    assert torch.isfinite(out).all()


def test_flops_are_counted_per_block(pack, unet):
    from comfyui_duca.adapters.unet import UNetAdapter
    dm = unet.model.diffusion_model
    adapter = UNetAdapter.for_model(dm)
    counted = {}
    handles = adapter.flop_hooks(dict(adapter.blocks()), counted)
    x = torch.randn(2, 4, 16, 16)
    try:
        dm(x, torch.tensor([500.0, 500.0]), context=torch.randn(2, 8, 64))
    finally:
        for h in handles:
            h.remove()
    conv_in = dm.input_blocks[0][0]  # 3x3, 4 -> 32 channels on 2 x 16 x 16 positions
    assert counted[("input", 0)] == 2 * (2 * 16 * 16 * conv_in.out_channels) * (4 * 3 * 3)
    assert set(counted) == {name for name, _ in blocks_of(unet)} and min(counted.values()) > 0


def test_reuse_on_the_same_input_reproduces_the_full_call(pack, duca, unet):
    """The kept feature is exactly the deep part: a reuse call on the input of the full call
    before it gives the full call's output, bit for bit, for every branch."""
    patch, core = duca
    from comfyui_duca.methods import HostContext, RunState, executor_for
    from comfyui_duca.adapters.unet import UNetAdapter
    dm = unet.model.diffusion_model
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([700.0, 700.0]), torch.randn(2, 8, 64)
    adapter = UNetAdapter.for_model(dm)
    expected = dm(x, t, context=context, transformer_options={})
    for branch in range(adapter.max_branch + 1):
        plan = core.Plan((core.StepPlan(core.Action.FULL), core.StepPlan(core.Action.AGGRESSIVE)))
        run = RunState(executor_for(core.DeepCacheConfig(branch=branch, plan=plan), adapter, HostContext((2.0, 1.0, 0.0))))
        outs = []
        for sigma in (2.0, 1.0):
            options = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0, 1]}
            call = run.begin_call(x, options)
            outs.append(run.method.on_call(run, call, lambda: dm(x, t, context=context, transformer_options=options)))
            run.end_call(call)
        assert run.stats.timeline == "FA"
        assert run.stats.steps[1].compute_done < run.stats.steps[1].compute_full
        assert torch.equal(outs[0], expected) and torch.equal(outs[1], expected), branch
    # and a reuse call on another step's input differs (the deep part is really reused)
    run = RunState(executor_for(core.DeepCacheConfig(plan=plan), adapter, HostContext((2.0, 1.0, 0.0))))
    outs = []
    for sigma, xi in ((2.0, x), (1.0, x * 0.5)):
        options = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0, 1]}
        call = run.begin_call(xi, options)
        outs.append(run.method.on_call(run, call, lambda: dm(xi, t, context=context, transformer_options=options)))
        run.end_call(call)
    assert not torch.equal(outs[1], dm(x * 0.5, t, context=context, transformer_options={}))


def test_split_cond_and_uncond_calls_keep_their_own_caches(pack, duca, unet, conds):
    """Prompts of different lengths are not batched: two calls a step, one plan per step, and
    each reuse call gets the deep feature of its own conditioning."""
    patch, core = duca
    positive = conds[0]
    negative = [[torch.zeros(1, 3, 64), {}]]  # 3 tokens against 8: ComfyUI won't concatenate them
    branch = 1
    model = patch.apply_method(unet, core.DeepCacheConfig(interval=3, branch=branch))
    dm = unet.model.diffusion_model
    n = len(dm.input_blocks)
    resblock, transformer = dm.output_blocks[n - 1 - branch][0], dm.output_blocks[n - 1 - branch][1]
    skip, pending, seen = [], [], []  # seen: (cond_or_uncond, deep feature entering the branch's output block)

    def after_skip(_m, _args, out):  # input block `branch` always runs: its output is the fresh skip
        skip.append(out.shape[1])

    def before_resblock(_m, args):  # its input is [deep feature, skip] along channels
        pending.append(args[0][:, :args[0].shape[1] - skip.pop()].clone())

    def before_transformer(_m, args):  # called with transformer_options: which conditionings
        seen.append((tuple(args[2]["cond_or_uncond"]), pending.pop()))
    handles = [dm.input_blocks[branch][-1].register_forward_hook(after_skip),
               resblock.register_forward_pre_hook(before_resblock),
               transformer.register_forward_pre_hook(before_transformer)]
    try:
        out = models.sample(model, positive, negative, cfg=3.0, **KW)
    finally:
        for h in handles:
            h.remove()
    stats = patch.last_stats(model)
    assert stats.timeline == "FAAFAAFAA"
    assert all(stats.steps[i].model_calls == 2 for i in range(STEPS))
    assert [c for c, _ in seen[:2]] in ([(0,), (1,)], [(1,), (0,)]) and len(seen) == 2 * STEPS
    kept = {}
    for step in range(STEPS):
        for which, feature in seen[2 * step:2 * step + 2]:
            if stats.timeline[step] == "F":
                kept[which] = feature
            else:
                assert torch.equal(feature, kept[which]), (step, which)
    assert not torch.equal(kept[(0,)], kept[(1,)])
    reference = models.sample(unet, positive, negative, cfg=3.0, **KW)
    assert 0 < distance(out, reference) < 0.05


def controlnet_for(unet, seed=7):
    """A ControlNet of ComfyUI's class (comfy.cldm) built for the small U-Net's config,
    random weights, wrapped as ComfyUI's loader wraps one."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    config = dict(unet.model.model_config.unet_config)
    for key in ("out_channels", "dtype"):
        config.pop(key, None)
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, device="cpu", **config)
    models.init_weights(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


def with_control(conditioning, control, hint, percent_range):
    """What ComfyUI's Apply ControlNet node puts on a conditioning."""
    c_net = control.copy().set_cond_hint(hint, 1.0, percent_range)
    return [[t, {**d, "control": c_net, "control_apply_to_uncond": False}] for t, d in conditioning]


def test_controlnet_residuals_still_apply_on_reuse_steps(pack, duca, unet, conds):
    patch, core = duca
    control = controlnet_for(unet)
    hint = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    positive, negative = conds
    kw = dict(KW, cfg=3.0)
    # the whole run: control works under DeepCache and stays close to the uncached run with control
    controlled = with_control(positive, control, hint, (0.0, 1.0))
    cached = patch.apply_method(unet, core.DeepCacheConfig(interval=3))
    plain, ctrl = models.sample(cached, positive, negative, **kw), models.sample(cached, controlled, negative, **kw)
    assert patch.last_stats(cached).timeline == "FAAFAAFAA"
    reference = models.sample(unet, controlled, negative, **kw)
    assert distance(ctrl, plain) > 1e-3
    assert distance(ctrl, reference) < 0.25 * distance(models.sample(unet, positive, negative, **kw), reference)
    # control only over the last steps, which a reuse-heavy plan reuses: it still changes the output
    plan = core.Plan(tuple(core.StepPlan(core.Action.FULL if i < 5 else core.Action.AGGRESSIVE)
                           for i in range(STEPS)))
    tail = patch.apply_method(unet, core.DeepCacheConfig(plan=plan))
    late = with_control(positive, control, hint, (0.65, 1.0))
    without, with_late = models.sample(tail, positive, negative, **kw), models.sample(tail, late, negative, **kw)
    assert patch.last_stats(tail).timeline == "FFFFFAAAA"
    assert distance(with_late, without) > 1e-4
    uncached_late = models.sample(unet, late, negative, **kw)
    assert distance(with_late, uncached_late) < 0.5 * distance(without, uncached_late)


def test_second_pass_on_an_existing_latent_is_close_to_uncached(pack, duca, trained):
    """A hires fix: the first pass's latent, upscaled 1.5x, denoised again at 0.5."""
    patch, core = duca
    model, positive, negative = trained
    first = models.sample(model, positive, negative, cfg=3.0, **KW)
    latent = torch.nn.functional.interpolate(first, scale_factor=1.5, mode="bilinear")
    kw = dict(cfg=3.0, steps=12, channels=4, latent=latent, denoise=0.5)
    reference = models.sample(model, positive, negative, **kw)
    cached = patch.apply_method(model, core.DeepCacheConfig(interval=3))
    out = models.sample(cached, positive, negative, **kw)
    stats = patch.last_stats(cached)
    assert out.shape == reference.shape == latent.shape and torch.isfinite(out).all()
    assert "A" in stats.timeline and stats.compute_fraction < 0.8
    assert 0 < distance(out, reference) < 0.2  # 0.13 with the per-channel-scaled SD weights (0.1 before)
    assert distance(out, reference) < 0.5 * distance(latent, reference)


def test_quadratic_schedule_and_window_reach_the_run(pack, duca, unet, conds):
    patch, core = duca
    node = host.node("DuCaDeepCache")
    (model,) = node.execute(unet, cache_interval=3, cache_depth=1, schedule="quadratic").result
    models.sample(model, *conds, **KW)
    expected = core.deepcache_plan(STEPS, 3, "quadratic")
    assert patch.last_stats(model).timeline == expected.timeline != core.deepcache_plan(STEPS, 3).timeline
    (windowed,) = node.execute(unet, cache_interval=2, cache_depth=0, start_percent=0.3, end_percent=0.8).result
    models.sample(windowed, *conds, **KW)
    assert patch.last_stats(windowed).timeline == "FFFAFAFFF"


def test_accelerate_maps_duca_presets_to_deepcache_on_a_u_net(pack, duca, unet, conds):
    patch, core = duca
    node = host.node("DuCaAccelerate")
    timelines = {}
    for preset in ("duca quality", "duca balanced", "duca fast"):
        (model,) = node.execute(unet, preset).result
        models.sample(model, *conds, **dict(KW, steps=12))
        stats = patch.last_stats(model)
        assert stats.method == "deepcache" and stats.level == "deepcache"
        timelines[preset] = stats.timeline
        cycle = core.PRESETS[preset.removeprefix("duca ")].interval  # said, not done quietly
        assert f"DuCa's cycle of {cycle} steps runs as DeepCache's of {cycle - 1}" in stats.notes[-1]
    assert timelines == {"duca quality": "FFFAFAFAFAFA", "duca balanced": "FFFAAFAAFAAF", "duca fast": "FFFAAAAFAAAA"}


def test_a_forecast_that_computes_every_step_is_bit_identical_on_a_u_net(pack, duca, unet, conds):
    patch, _ = duca
    from comfyui_duca.methods import ForecastConfig
    full = patch.apply_method(unet, ForecastConfig(budget=1.0))
    assert full is not unet
    out = models.sample(full, *conds, **dict(KW, steps=12, cfg=4.0))
    assert torch.equal(out, models.sample(unet, *conds, **dict(KW, steps=12, cfg=4.0)))
    assert patch.last_stats(full).timeline == "F" * 12


def test_accelerate_budget_presets_forecast_the_u_nets_output(pack, duca, unet, conds):
    """The budget presets run on U-Nets too, over whole model calls: the U-Net runs on the
    computed steps only (a forward hook on its first convolution counts it)."""
    patch, core = duca
    calls = []
    handle = unet.model.diffusion_model.input_blocks[0][0].register_forward_hook(lambda *_: calls.append(1))
    try:
        (model,) = host.node("DuCaAccelerate").execute(unet, "balanced").result
        out = models.sample(model, *conds, **dict(KW, steps=20))
    finally:
        handle.remove()
    stats = patch.last_stats(model)
    assert stats.method == "forecast balanced" and stats.level == "step"
    assert stats.timeline.count("F") == 7 and len(calls) == 7 * stats.steps[0].model_calls
    assert torch.isfinite(out).all()


def test_node_inputs_and_errors(pack, unet):
    node = host.node("DuCaDeepCache")
    assert node.GET_SCHEMA().display_name == "DeepCache (U-Net)"
    assert node.CATEGORY == "DuCa Accelerate" and node.RETURN_TYPES == ["MODEL"]
    inputs = node.INPUT_TYPES()
    assert set(inputs["required"]) == {"model", "cache_interval", "cache_depth", "schedule"}
    assert set(inputs["optional"]) == {"start_percent", "end_percent", "estimator"}
    assert inputs["hidden"] == {"unique_id": ("UNIQUE_ID",)}  # where the UI shows the run's stats
    for section in (inputs["required"], inputs["optional"]):
        for name, (_, options) in section.items():
            assert options.get("tooltip"), f"{name} has no tooltip"
    before = dict(unet.model_options.get("transformer_options", {}))
    (patched,) = node.execute(unet, 3, 3, "uniform").result
    assert patched is not unet and unet.model_options.get("transformer_options", {}) == before


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(cache_interval=0), "cache_interval"),
    (dict(cache_depth=4), r"cache_depth must be in \[0, 3\]"),
    (dict(cache_depth=-1), "cache_depth"),
    (dict(schedule="cubic"), "schedule"),
    (dict(start_percent=1.5), "start_percent"),
    (dict(start_percent=0.8, end_percent=0.2), "start_percent"),
])
def test_bad_input_is_a_clear_error_naming_it(pack, unet, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        host.node("DuCaDeepCache").execute(unet, **kwargs)


def test_a_model_that_is_not_a_u_net_is_refused_by_name(pack, flux):
    with pytest.raises(ValueError, match="model must be a U-Net.*Flux"):
        host.node("DuCaDeepCache").execute(flux)


def test_config_errors_name_the_setting(pack, duca):
    _, core = duca
    for kwargs, name in ((dict(branch=-1), "branch"), (dict(placement="x"), "placement"),
                         (dict(power=0.5), "power"), (dict(center=2.0), "center"), (dict(interval=0), "interval")):
        with pytest.raises(ValueError, match=name):
            core.DeepCacheConfig(**kwargs)


def test_a_branch_too_deep_for_the_model_fails_before_sampling(pack, duca, unet):
    patch, core = duca
    with pytest.raises(ValueError, match=r"cache_depth must be in \[0, 3\]"):  # refused when attached
        patch.apply_method(unet, core.DeepCacheConfig(branch=7))


# The published architectures (ComfyUI's detected unet_config), built on the meta device:
# shapes and FLOPs only, no weights.
COMMON = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
          "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
          "use_temporal_resblock": False}
SD15 = dict(COMMON, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1, adm_in_channels=None)
SD21 = dict(SD15, use_linear_in_transformer=True, context_dim=1024, num_heads=-1, num_head_channels=64)
SDXL = dict(COMMON, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
            transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            use_linear_in_transformer=True, context_dim=2048, num_head_channels=64, num_classes="sequential",
            adm_in_channels=2816)


@pytest.mark.parametrize("name, config_class, unet_config, side, branches, family, reuse_share", [
    ("SD1.5 512px", "SD15", SD15, 64, 12, "SD1-like", 0.10),
    ("SD2.1 768px", "SD20", SD21, 96, 12, "SD2-like", 0.10),
    ("SDXL 1024px", "SDXL", SDXL, 128, 9, "SDXL-like", 0.02),
])
def test_published_u_nets_run_full_and_reuse_calls(pack, duca, name, config_class, unet_config, side, branches,
                                                    family, reuse_share):
    """Their block layouts are recognised, the node's tooltip range holds, and a full call then
    a reuse call go through the host's forward; branch 0's reuse call costs a few percent."""
    import comfy.supported_models
    _, core = duca
    from comfyui_duca.adapters.unet import UNetAdapter
    from comfyui_duca.methods import HostContext, RunState, executor_for
    model_config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    dm = model_config.get_model({}, device="meta").diffusion_model
    adapter = UNetAdapter.for_model(dm)
    assert adapter is not None and adapter.variant == family and adapter.max_branch == branches - 1
    context = torch.zeros(2, 77, unet_config["context_dim"], device="meta")
    extra = {"y": torch.zeros(2, 2816, device="meta")} if unet_config["adm_in_channels"] else {}
    x = torch.zeros(2, 4, side, side, device="meta")
    plan = core.Plan((core.StepPlan(core.Action.FULL), core.StepPlan(core.Action.AGGRESSIVE)))
    run = RunState(executor_for(core.DeepCacheConfig(plan=plan), adapter, HostContext((2.0, 1.0, 0.0))))
    for sigma in (2.0, 1.0):
        options = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0, 1]}
        call = run.begin_call(x, options)
        with torch.no_grad():
            out = run.method.on_call(run, call, lambda: dm(x, torch.zeros(2, device="meta"), context=context,
                                                           transformer_options=options, **extra))
        run.end_call(call)
        assert out.shape == x.shape
    assert run.stats.timeline == "FA"
    reuse = run.stats.steps[1]
    assert 0 < reuse.compute_done / reuse.compute_full < reuse_share, name


def test_a_failing_reuse_call_computes_and_switches_caching_off(pack, duca, unet, conds, monkeypatch, caplog):
    """The first stand-in of a reuse call raises before any layer is skipped: every layer of
    that call computes, the rest of the run computes, one log line and one stats note say so,
    and the output is the uncached one, bit for bit."""
    import logging
    patch, core = duca
    from comfyui_duca.methods import deepcache as deepcache_method
    kw = dict(KW, cfg=3.0)
    reference = models.sample(unet, *conds, **kw)
    tries = []

    def broken(self, x):
        tries.append(self.call.step)
        raise RuntimeError("kept feature lost")
    monkeypatch.setattr(deepcache_method.DeepCacheReuse, "prepare", broken)
    model = patch.apply_method(unet, core.DeepCacheConfig(interval=3, branch=1))
    with caplog.at_level(logging.ERROR, logger="comfyui-duca"):
        out, counts = sample_counting(model, unet, *conds, **kw)
    stats = patch.last_stats(model)
    assert tries == [1]  # the first reuse call failed; nothing was tried after it
    assert torch.equal(out, reference) and stats.compute_fraction == 1.0
    assert set(counts.values()) == {STEPS}  # every block really ran on every step
    assert [n for n in stats.notes if "switched off" in n] == ["caching switched off at step 1: "
                                                               "RuntimeError('kept feature lost')"]
    assert len([r for r in caplog.records if "reusing features failed" in r.getMessage()]) == 1


def test_a_reuse_call_failing_partway_is_computed_again(pack, duca, unet, conds, monkeypatch, caplog):
    """A stand-in raising after shallow layers have run (and ControlNet-style inputs may have
    been consumed): the whole call runs again uncached and the rest of the run computes."""
    import logging
    patch, core = duca
    from comfyui_duca.methods import deepcache as deepcache_method
    kw = dict(KW, cfg=3.0)
    reference = models.sample(unet, *conds, **kw)
    original_stand_ins = deepcache_method.DeepCacheReuse.stand_ins

    def failing_feature(self, blocks, skipped):
        stand_ins = original_stand_ins(self, blocks, skipped)
        last = list(blocks[self.feature_block])[-1]
        guarded = stand_ins[last]

        def fail(*args, **kwargs):
            guarded(*args, **kwargs)  # prepared and checked: the failure comes after
            raise RuntimeError("lost mid-call")
        stand_ins[last] = fail
        return stand_ins
    monkeypatch.setattr(deepcache_method.DeepCacheReuse, "stand_ins", failing_feature)
    model = patch.apply_method(unet, core.DeepCacheConfig(interval=3, branch=1))
    with caplog.at_level(logging.ERROR, logger="comfyui-duca"):
        out = models.sample(model, *conds, **kw)
    stats = patch.last_stats(model)
    assert torch.equal(out, reference)
    assert [n for n in stats.notes if "switched off" in n] == ["caching switched off at step 1: "
                                                               "RuntimeError('lost mid-call')"]
    assert len([r for r in caplog.records if "reusing features failed" in r.getMessage()]) == 1
