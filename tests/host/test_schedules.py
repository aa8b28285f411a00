"""Cache schedules on ComfyUI's real model classes and samplers: bit-identity when every
block computes, blocks run exactly as scheduled, mismatches refused, the schedule nodes."""
import pytest
import torch

from testbed import host, models
from testbed.families import FAMILIES

STEPS = 6
SMALL = dict(height=64, width=64)


@pytest.fixture(scope="module")
def api(pack):
    from comfyui_duca.cache_core import schedule_rules
    from comfyui_duca.cache_core.schedule import Cell, Schedule, ScheduleMismatch
    from comfyui_duca.glue import patch, schedules
    from comfyui_duca.methods import DuCaConfig, ScheduleConfig
    from comfyui_duca.nodes.schedules import sampling_from
    return dict(DuCaConfig=DuCaConfig, ScheduleConfig=ScheduleConfig, rules=schedule_rules, Cell=Cell,
                Schedule=Schedule, ScheduleMismatch=ScheduleMismatch, patch=patch, schedules=schedules,
                sampling_from=sampling_from)


def run_node(node_id: str, *args, **kwargs) -> tuple:
    """A node's outputs, executed as the host runs it."""
    return host.node(node_id).execute(*args, **kwargs).result


def units_of(api, model):
    return api["schedules"].model_units(model)


def run_flux(model, conds, **kwargs):
    positive, negative = conds
    return models.sample(model, positive, negative, **{"steps": STEPS, **SMALL, **kwargs})


def scheduled(api, model, schedule):
    return api["patch"].apply_method(model, api["ScheduleConfig"](schedule))


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (4.0, 2)])
def test_all_compute_schedule_is_bit_identical_on_flux(api, flux, flux_conds, cfg, batch):
    family, units = units_of(api, flux)
    reference = run_flux(flux, flux_conds, cfg=cfg, batch=batch)
    patched = scheduled(api, flux, api["rules"].fora(STEPS, units, family, interval=1))
    assert torch.equal(run_flux(patched, flux_conds, cfg=cfg, batch=batch), reference)


@pytest.mark.parametrize("name", ["qwen-image", "lumina2"])
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_all_compute_schedule_is_bit_identical_on_block_and_step_level_families(api, name, cfg):
    family = FAMILIES[name]
    model = family.build(0)
    kind, units = units_of(api, model)
    run = lambda m: models.sample(m, family.conditioning(1), family.negative(2), steps=STEPS, cfg=cfg,  # noqa: E731
                                  latent=family.latent(1))
    reference = run(model)
    assert torch.equal(run(scheduled(api, model, api["rules"].fora(STEPS, units, kind, interval=1))), reference)
    reused = scheduled(api, model, api["rules"].fora(STEPS, units, kind, interval=2))
    out = run(reused)
    assert not torch.equal(out, reference)
    assert (out - reference).norm() / reference.norm() < 0.3
    assert api["patch"].last_stats(reused).compute_fraction < 0.75


def calls_per_step(model, modules: dict, run):
    """Run `run()` and count, per model call (one per step at cfg 1 with euler), how often each
    named host module ran."""
    counts, handles = [], []
    dm = model.model.diffusion_model
    handles.append(dm.register_forward_pre_hook(lambda *_: counts.append({name: 0 for name in modules})))

    def count(name):
        def hook(*_):
            counts[-1][name] += 1
        return hook
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(count(name)))
        run()
    finally:
        for h in handles:
            h.remove()
    return counts


def test_eb_cache_runs_attention_and_mlp_as_scheduled_on_flux(api, flux, flux_conds):
    family, units = units_of(api, flux)
    schedule = api["rules"].eb_cache(STEPS, units, family, attention_interval=3, mlp_interval=2, first_full_steps=1)
    block = flux.model.diffusion_model.double_blocks[0]
    patched = scheduled(api, flux, schedule)
    counts = calls_per_step(flux, {"attention": block.img_attn.qkv, "mlp": block.img_mlp},
                            lambda: run_flux(patched, flux_conds))
    cell = api["Cell"]
    expected = [{"attention": int(schedule.cell(i, 0) is cell.COMPUTE),
                 "mlp": int(schedule.cell(i, 0) is not cell.REUSE)} for i in range(STEPS)]
    assert counts == expected
    assert {schedule.cell(i, 0) for i in range(STEPS)} == set(cell)  # all three kinds ran


def test_block_level_family_reuses_whole_blocks_as_scheduled(api):
    family = FAMILIES["qwen-image"]
    model = family.build(0)
    kind, units = units_of(api, model)
    schedule = api["rules"].fora(STEPS, units, kind, interval=3)
    blocks = family.block_modules(model)
    patched = scheduled(api, model, schedule)
    counts = calls_per_step(model, {f"block{i}": b for i, b in enumerate(blocks)},
                            lambda: models.sample(patched, family.conditioning(1), steps=STEPS,
                                                  latent=family.latent(1)))
    for step, seen in enumerate(counts):
        computed = schedule.computes_step(step)
        assert all(n == int(computed) for n in seen.values()), (step, seen)


def test_schedule_for_another_model_is_refused_and_other_step_counts_resampled(api, flux, flux_conds):
    family, units = units_of(api, flux)
    with pytest.raises(api["ScheduleMismatch"], match="made for a wan model"):
        scheduled(api, flux, api["rules"].fora(STEPS, units, "wan"))
    with pytest.raises(api["ScheduleMismatch"], match="blocks"):
        scheduled(api, flux, api["rules"].fora(STEPS, units[:-1], family))
    patched = scheduled(api, flux, api["rules"].fora(12, units, family, interval=2))
    run_flux(patched, flux_conds)
    stats = api["patch"].last_stats(patched)
    assert "resampled from 12 to 6 steps" in stats.notes
    assert stats.timeline == "FPFPFP"


def test_a_schedule_keeps_to_the_shared_step_window(api, flux, flux_conds):
    family, units = units_of(api, flux)
    fora = api["rules"].fora(STEPS, units, family, interval=2)
    windowed = api["patch"].apply_method(flux, api["ScheduleConfig"](fora, first_full_steps=2, end=0.75))
    plain = scheduled(api, flux, fora)
    out, plain_out = run_flux(windowed, flux_conds), run_flux(plain, flux_conds)
    stats, plain_stats = api["patch"].last_stats(windowed), api["patch"].last_stats(plain)
    assert plain_stats.timeline == "FPFPFP" and stats.timeline == "FFFPFF"  # steps 2-4 of 6 may skip
    assert "outside the step window" in stats.notes[-1] and not torch.equal(out, plain_out)


def test_schedule_nodes_make_save_load_and_apply(api, flux, flux_conds, tmp_path):
    import folder_paths
    schedule, picture = run_node("DuCaFORASchedule", flux, STEPS, 2, 1)
    assert picture.shape[0] == 1 and picture.shape[-1] == 3
    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    load = host.node("DuCaLoadSchedule")

    def listed():  # the node list the server sends (/object_info), asked again after each save
        with folder_paths.cache_helper:
            return load.GET_NODE_INFO_V1()["input"]["required"]["schedule_name"][1]["options"]
    try:
        assert "mine_00001.safetensors" not in listed()
        for fmt in ("safetensors", "json"):
            ui = host.node("DuCaSaveSchedule").execute(schedule, "mine", fmt).ui
            saved = ui["schedules"][0]
            assert (tmp_path / saved["subfolder"] / saved["filename"]).exists()
            assert saved["filename"] in listed()  # a newly saved schedule shows up without a restart
        assert {"mine_00001.safetensors", "mine_00002.json"} <= set(listed())
        for name in ("mine_00001.safetensors", "mine_00002.json"):
            loaded, _ = load.execute(name).result
            assert torch.equal(loaded.table, schedule.table) and loaded.units == schedule.units
        with pytest.raises(ValueError, match="schedule_name"):
            load.execute("missing.json")
    finally:
        folder_paths.set_output_directory(previous)
    (applied,) = run_node("DuCaApplySchedule", flux, loaded)
    run_flux(applied, flux_conds)
    assert api["patch"].last_stats(applied).timeline == "FPFPFP"
    (accelerated,) = run_node("DuCaAccelerate", flux, "balanced", schedule=loaded)
    run_flux(accelerated, flux_conds)
    assert api["patch"].last_stats(accelerated).method == "fora"


def test_eb_cache_node_refuses_bad_table_naming_it(api, flux):
    with pytest.raises(ValueError, match="table"):
        run_node("DuCaEBCacheSchedule", flux, STEPS, 3, 2, 1, table="0x")
    with pytest.raises(ValueError, match="mlp_interval"):
        run_node("DuCaEBCacheSchedule", flux, STEPS, 2, 3, 1)


def flux_sampling_inputs(flux_conds, steps=STEPS):
    positive, negative = flux_conds
    return dict(positive=positive, negative=negative, latent_image={"samples": torch.zeros(1, 16, 8, 8)},
                seed=0, steps=steps, cfg=1.0, sampler_name="euler", scheduler="simple")


def test_block_caching_calibration_measures_change_and_reuses_calm_blocks(api, flux, flux_conds):
    node = host.node("DuCaBlockCachingCalibration")
    eager, _ = node.execute(flux, **flux_sampling_inputs(flux_conds), threshold=0.0, first_full_steps=1).result
    assert eager.computes_everything   # any change passes a zero threshold
    profile = api["schedules"].measure_change(flux, api["sampling_from"](**flux_sampling_inputs(flux_conds)))
    change = profile.relative_change()
    assert change.shape == (STEPS, 6) and bool((change[1:] > 0).all())
    threshold = float(change[1:].median()) * 1.5
    calm, _ = node.execute(flux, **flux_sampling_inputs(flux_conds), threshold=threshold, first_full_steps=1).result
    assert 0.2 < calm.compute_fraction() < 0.95
    patched = scheduled(api, flux, calm)
    run_flux(patched, flux_conds)
    assert api["patch"].last_stats(patched).compute_fraction < 0.95


def test_calibration_refuses_an_accelerated_model(api, flux, flux_conds):
    accelerated = api["patch"].apply_method(flux, api["DuCaConfig"]())
    with pytest.raises(ValueError, match="model: Block Caching"):
        run_node("DuCaBlockCachingCalibration", accelerated, **flux_sampling_inputs(flux_conds), threshold=0.1,
                 first_full_steps=1)


def test_learn_to_cache_trains_the_router_on_weights_loaded_in_inference_mode(api, flux_conds):
    from comfyui_duca.glue import l2c
    with torch.inference_mode():  # as the host's loaders run
        model = models.flux(seed=3)
    weight = model.model.diffusion_model.double_blocks[0].img_mlp[0].weight
    assert weight.is_inference()
    sampling = api["sampling_from"](**flux_sampling_inputs(flux_conds))
    with torch.inference_mode():  # as the host runs its nodes
        learned = l2c.learn_router(model, sampling, full_every=3, iterations=2, seconds=120)
    assert learned.iterations == 2 and learned.routed_steps == [1, 2, 4, 5]
    start = torch.sigmoid(torch.tensor(3.0))
    assert not torch.allclose(learned.gates[learned.routed_steps], start)  # the router moved
    assert torch.allclose(learned.gates[[0, 3]], start)                    # full steps are not routed
    assert model.model.diffusion_model.double_blocks[0].img_mlp[0].weight is weight  # weights given back
    schedule = learned.schedule(api["schedules"].model_adapter(model), threshold=0.5)
    assert schedule.method == "l2c" and schedule.computes_step(0)


def test_learn_to_cache_node_reports_progress_and_refuses_step_level_families(api, flux, flux_conds):
    import comfy.utils
    progress, previous = [], comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, *_, **__: progress.append((value, total)))
    try:
        schedule, picture = run_node("DuCaLearnToCache", flux, **flux_sampling_inputs(flux_conds), full_every=2,
                                     compute=0.5, iterations=1, minutes=1.0, reuse_pressure=0.05)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert progress[-1] == (1, 1)  # the host's progress bar moved to the end of training
    assert schedule.units == units_of(api, flux)[1] and picture.shape[0] == 1
    assert schedule.compute_fraction() == pytest.approx(0.5)  # the full steps alone: every routed block reused
    more, _ = run_node("DuCaLearnToCache", flux, **flux_sampling_inputs(flux_conds), full_every=2,
                       compute=0.75, iterations=1, minutes=1.0, reuse_pressure=0.05)
    assert more.compute_fraction() >= 0.75 - 1 / 36  # untrained steps' gates tie: all of a tie is computed
    lumina = FAMILIES["lumina2"]
    with pytest.raises(ValueError, match="model: Learn to Cache needs"):
        run_node("DuCaLearnToCache", lumina.build(0), positive=lumina.conditioning(1), negative=lumina.negative(2),
                 latent_image={"samples": lumina.latent(1)}, seed=0, steps=STEPS, cfg=1.0, sampler_name="euler",
                 scheduler="simple", full_every=2, compute=0.5, iterations=1, minutes=1.0, reuse_pressure=0.05)


def test_exposure_bias_scales_the_sampler_derivative_and_composes(api, flux, flux_conds):
    from comfyui_duca.glue import exposure
    def correct(model, delta):
        return run_node("DuCaExposureBias", model, delta)[0]
    reference = run_flux(flux, flux_conds, cfg=3.5)
    same = correct(flux, 1.0)
    assert torch.equal(run_flux(same, flux_conds, cfg=3.5), reference)
    corrected = correct(flux, 0.95)
    twice = correct(corrected, 0.95)   # applied again: replaced, not stacked
    assert len(twice.model_options["sampler_post_cfg_function"]) == 1
    seen = []
    corrected.set_model_sampler_post_cfg_function(lambda args: seen.append(args) or args["denoised"])
    out = run_flux(corrected, flux_conds, cfg=3.5)
    assert not torch.equal(out, reference)
    x, d = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose((x - exposure.corrected_denoised(x, d, 0.95)) * 0.95, x - d)  # d / delta
    accelerated = api["patch"].apply_method(flux, api["DuCaConfig"]())
    both = correct(accelerated, 0.95)
    assert not torch.equal(run_flux(both, flux_conds, cfg=3.5), run_flux(accelerated, flux_conds, cfg=3.5))
    assert api["patch"].last_stats(both).compute_fraction < 1.0
    with pytest.raises(ValueError, match="delta"):
        correct(flux, 3.0)


def test_step_rehash_node_finds_key_steps_by_similarity(api, flux, flux_conds):
    strict, _ = run_node("DuCaStepRehashSchedule", flux, **flux_sampling_inputs(flux_conds), similarity=1.0,
                         shallow_blocks=1, first_full_steps=1)
    assert strict.computes_everything          # no step is ever that similar: all are key steps
    loose, _ = run_node("DuCaStepRehashSchedule", flux, **flux_sampling_inputs(flux_conds), similarity=-1.0,
                        shallow_blocks=2, first_full_steps=1)
    cell = api["Cell"]
    assert loose.computes_step(0) and not any(loose.computes_step(i) for i in range(1, STEPS))
    assert all(loose.cell(i, 1) is cell.COMPUTE and loose.cell(i, 2) is cell.REUSE for i in range(1, STEPS))
    patched = scheduled(api, flux, loose)
    run_flux(patched, flux_conds)
    assert api["patch"].last_stats(patched).compute_fraction < 0.6


def test_step_rehash_compares_the_chosen_block(api, flux, flux_conds):
    _, units = units_of(api, flux)
    sampling = api["sampling_from"](**flux_sampling_inputs(flux_conds))
    rehash = api["schedules"].step_rehash_schedule
    similarity = {}
    for probe in (0, -1):
        _, profile = rehash(flux, sampling, 0.95, 1, 1, probe_block=probe)
        assert profile.probe_unit == probe % len(units)
        similarity[probe] = profile.similarity()
    assert not torch.allclose(similarity[0], similarity[-1])   # another block's output, other similarities
    for bad in (len(units), -len(units) - 1):
        with pytest.raises(ValueError, match="probe_block"):
            run_node("DuCaStepRehashSchedule", flux, **flux_sampling_inputs(flux_conds), similarity=0.9,
                     shallow_blocks=1, first_full_steps=1, probe_block=bad)
