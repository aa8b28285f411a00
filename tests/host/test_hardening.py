"""Hardening on ComfyUI's real Flux classes and samplers: the cases users hit once prompts,
batching and other nodes stop looking like the plain case. Every check runs for the flagship's
default budget preset (the whole-step forecast) and for DuCa's token-wise cycle.

- Text length: a prompt whose token count changes between runs gets a fresh run each time; a cond
  and an uncond of different text lengths (which the host cannot batch, so it calls the model once
  for each) each keep their own state, as do prompts set on different areas of the picture.
- Batching: cond and uncond batched in one model call give what one call each gives (the host
  splits them when memory is short), and the latents of a batch never mix.
- Failures: another node's wrapper raising inside the model call, and a run interrupted from the
  sampler's callback, leave nothing behind: the next run is a clean one, no tensors stay alive.
"""
import functools
import gc

import pytest
import torch

from testbed import forecast_checks, host, models

host.load_pack()
from comfyui_duca.methods.forecast import FEW_STEPS  # noqa: E402

PRESETS = ["balanced", "duca balanced"]  # the whole-step forecast, DuCa's token-wise cycle
SMALL = dict(height=64, width=64)         # 16 image tokens: fast plumbing checks
STEPS = FEW_STEPS                         # the fewest steps the budget presets skip at
CFG = 3.5                                 # cfg > 1: the host evaluates cond and uncond every step


def calls_handed(preset, model_calls):
    """The calls a preset's run counts per step where the host makes `model_calls` model calls:
    the budget presets take a step's whole cond batch at once, DuCa each model call."""
    return 1 if preset == "balanced" else model_calls


def accelerate(model, preset):
    (out,) = host.node("DuCaAccelerate").execute(model, preset).result
    return out


def prompt(flux, tokens, seed):
    return models.flux_conditioning(tokens=tokens, seed=seed, model=flux)


def sample(model, positive, negative, **kwargs):
    return models.sample(model, positive, negative, **{"steps": STEPS, "cfg": CFG, **SMALL, **kwargs})


def relative_l2(out, reference):
    return float((out - reference).norm() / reference.norm())


def reuses(timeline):
    """The run skipped or reused something (else these checks would test nothing)."""
    return set(timeline) - {"F"} != set()


class CallBatches:
    """The batch size of every call of the host's diffusion model (a forward hook)."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __enter__(self):
        dm = self.model.model.diffusion_model
        self.handle = dm.register_forward_hook(lambda _m, args, _out: self.batches.append(args[0].shape[0]))
        return self

    def __exit__(self, *_):
        self.handle.remove()


def one_conditioning_per_call(monkeypatch, model, latent_shape):
    """Make the host think memory is short: calc_cond_batch batches conditionings while
    memory_required(batch) * 1.5 < free memory, so free memory of twice one conditioning's
    need lets exactly one fit per call (its fallback when none fits is one per call too). The host
    reads it from comfy.model_management (newer hosts through the patcher, which asks it too)."""
    import comfy.model_management
    one = model.model.memory_required(list(latent_shape))
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *_a, **_k: 2 * one)


def live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


# Counted with the same tensors held on both sides, so a clean host counts 0 more; one spare for
# a buffer the host may build lazily. A run's leftovers would be more: the forecast keeps two
# points per conditioning group (and the call's sample), DuCa every block's modules.
LIVE_TENSOR_SLACK = 1


def forget_logged_tracebacks(caplog):
    """pytest keeps a test's log records, and a logged exception's traceback keeps its frames'
    tensors alive (the engine logs its fallback with one); the host's own log keeps the text only."""
    for record in caplog.records:
        record.exc_info = None


# --- 1. text length -----------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_a_prompt_whose_text_length_changes_between_runs_gets_a_fresh_run(flux, duca, preset):
    patch, _ = duca
    accelerated = accelerate(flux, preset)
    outputs = []
    for tokens in (8, 13, 8):
        positive, negative = prompt(flux, tokens, 1), prompt(flux, tokens, 2)
        out = sample(accelerated, positive, negative)
        stats = patch.last_stats(accelerated)
        assert not stats.notes, (tokens, stats.notes)   # no step fell back
        assert reuses(stats.timeline)
        # what an accelerator that never saw the other length gives
        assert torch.equal(out, sample(accelerate(flux, preset), positive, negative)), tokens
        outputs.append(out)
    assert torch.equal(outputs[2], outputs[0])


@pytest.mark.parametrize("preset", PRESETS)
def test_cond_and_uncond_of_different_text_lengths_each_keep_their_own_state(flux, duca, preset):
    patch, _ = duca
    # 8 and 13 text tokens: the host's cross-attention conds of Flux only batch at equal lengths
    positive, negative = prompt(flux, 8, 1), prompt(flux, 13, 2)
    reference = sample(flux, positive, negative, batch=2)
    accelerated = accelerate(flux, preset)
    with CallBatches(flux) as calls:
        out = sample(accelerated, positive, negative, batch=2)
    assert calls.batches and set(calls.batches) == {2}   # one conditioning per model call
    stats = patch.last_stats(accelerated)
    assert reuses(stats.timeline)
    # both conditionings went through the run at every step, and neither lacked a cache of its own
    assert [stats.steps[i].model_calls for i in range(STEPS)] == [calls_handed(preset, 2)] * STEPS
    assert not stats.notes, stats.notes
    assert torch.isfinite(out).all()
    assert relative_l2(out, reference) < 0.3


def test_separately_called_cond_and_uncond_are_forecast_from_their_own_points(flux, duca):
    """The post-cfg view of a run with cond and uncond of different lengths (one model call each):
    on every skipped step each output is the linear forecast, in sigma, of the noise that same
    conditioning implied on its own last two computed steps; points shared between the two
    calls would show here."""
    patch, _ = duca
    recorded, seen = forecast_checks.recording(accelerate(flux, "balanced"))
    sample(recorded, prompt(flux, 8, 1), prompt(flux, 13, 2), batch=2, sampler=forecast_checks.SAMPLER)
    forecast_checks.assert_forecast_from_own_points(seen, patch.last_stats(recorded).timeline)


def sample_at(model, positive, negative, cfg, **kwargs):
    return models.sample(model, positive, negative, **{"steps": STEPS, "cfg": cfg, **kwargs})


def with_area(conditioning, width, height, x, y):
    """The host's Conditioning (Set Area): this conditioning acts on a crop of the latent only."""
    import nodes
    (out,) = nodes.ConditioningSetArea().append(conditioning, width, height, x, y, 1.0)
    return out


def combined(*conditionings):
    import nodes
    out = conditionings[0]
    for other in conditionings[1:]:
        (out,) = nodes.ConditioningCombine().combine(out, other)
    return out


AREA_SIZE = dict(height=96, width=96)  # 12x12 latent; the areas below are 6x6 corners of it


@pytest.mark.parametrize("cfg", [1.0, CFG])
@pytest.mark.parametrize("preset", PRESETS)
def test_area_conditionings_each_keep_their_own_state(flux, duca, preset, cfg):
    """A prompt over the whole picture combined with two over opposite quarters: the host calls
    the model on the crops for the area prompts (inputs of another shape than the whole picture's,
    and the two crops' prompts of different lengths), every step. Each keeps its own cache: no
    step falls back for want of one, an all-full plan is bit-identical, and the run repeats."""
    patch, core = duca
    positive = combined(prompt(flux, 8, 1), with_area(prompt(flux, 11, 3), 48, 48, 0, 0),
                        with_area(prompt(flux, 13, 4), 48, 48, 48, 48))
    negative = prompt(flux, 8, 2)
    sample = functools.partial(sample_at, cfg=cfg)
    shapes = []
    dm = flux.model.diffusion_model
    handle = dm.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        reference = sample(flux, positive, negative, **AREA_SIZE)
    finally:
        handle.remove()
    assert {(12, 12), (6, 6)} <= set(shapes), set(shapes)  # the area prompt ran on its crop
    calls_per_step = len(shapes) // STEPS

    full = patch.apply_method(flux, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert torch.equal(sample(full, positive, negative, **AREA_SIZE), reference)

    accelerated = accelerate(flux, preset)
    out = sample(accelerated, positive, negative, **AREA_SIZE)
    stats = patch.last_stats(accelerated)
    assert reuses(stats.timeline) and not stats.notes, (stats.timeline, stats.notes)
    assert [stats.steps[i].model_calls for i in range(STEPS)] == [calls_handed(preset, calls_per_step)] * STEPS
    assert relative_l2(out, reference) < 0.3
    assert torch.equal(sample(accelerated, positive, negative, **AREA_SIZE), out)


# --- 2. batched or separate calls ---------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_cond_and_uncond_batched_or_called_separately_give_the_same_output(flux, flux_conds, duca, monkeypatch,
                                                                          preset):
    patch, _ = duca
    accelerated = accelerate(flux, preset)
    with CallBatches(flux) as calls:
        batched = sample(accelerated, *flux_conds, batch=2)
    assert set(calls.batches) == {4}   # 2 latents x (cond, uncond) in each call
    batched_timeline = patch.last_stats(accelerated).timeline
    assert reuses(batched_timeline)

    one_conditioning_per_call(monkeypatch, flux, (2, 16, 8, 8))
    with CallBatches(flux) as calls:
        separate = sample(accelerated, *flux_conds, batch=2)
    assert set(calls.batches) == {2}   # cond and uncond each in their own call
    stats = patch.last_stats(accelerated)
    assert stats.timeline == batched_timeline and not stats.notes
    # 1e-4: the two differ only by float rounding (the host's kernels at batch 4 against 2),
    # carried through the steps; a cache shared or mixed up between the calls is far off
    assert torch.allclose(separate, batched, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("calls", ["batched", "one conditioning per call"])
@pytest.mark.parametrize("preset", PRESETS)
def test_batch_elements_never_leak_into_each_other(flux, flux_conds, monkeypatch, preset, calls):
    """A batch of two latents: each element's output is the one it gets sampled alone."""
    import comfy.sample
    if calls != "batched":
        one_conditioning_per_call(monkeypatch, flux, (2, 16, 8, 8))
    accelerated = accelerate(flux, preset)
    latent = torch.zeros(2, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    positive, negative = flux_conds

    def run(n, x):
        return comfy.sample.sample(accelerated, n, STEPS, CFG, "euler", "simple", positive, negative, x,
                                   disable_pbar=True, seed=0)
    both = run(noise, latent)
    for i in range(2):
        alone = run(noise[i:i + 1], latent[i:i + 1])
        # float rounding at another batch size, as above
        assert torch.allclose(both[i:i + 1], alone, rtol=1e-4, atol=1e-5), i


# --- 3. failures --------------------------------------------------------------------------------

class FailingWrapper:
    """Another node's DIFFUSION_MODEL wrapper that raises at its `at`-th call (from then on, or
    that call only), before handing the call on."""

    def __init__(self, error, at, persistent):
        self.error, self.at, self.persistent, self.calls = error, at, persistent, 0

    def __call__(self, executor, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at or (self.persistent and self.calls > self.at):
            raise self.error("another node failed")
        return executor(*args, **kwargs)


def interrupt():
    import comfy.model_management
    return comfy.model_management.InterruptProcessingException


# A node that breaks from its 4th call on (an error reaches the user, however the accelerator
# falls back); the host's stop button seen once inside a model call (never swallowed). The 4th
# call is past the first computed steps, where the caches are filled.
FAILURES = {"error": (lambda: RuntimeError, True), "interrupt": (interrupt, False)}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("preset", PRESETS)
def test_a_failure_in_another_nodes_wrapper_leaves_nothing_behind(flux, flux_conds, duca, caplog, preset,
                                                                  failure):
    import comfy.patcher_extension
    patch, _ = duca
    accelerated = accelerate(flux, preset)
    clean = sample(accelerated, *flux_conds)
    assert reuses(patch.last_stats(accelerated).timeline)
    error, persistent = FAILURES[failure]
    error = error()
    failing = accelerated.clone()
    failing.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "another_node",
                                 FailingWrapper(error, at=4, persistent=persistent))
    before = live_tensors()
    with pytest.raises(error, match="another node failed"):
        sample(failing, *flux_conds)
    again = sample(accelerated, *flux_conds)
    assert torch.equal(again, clean)
    del again
    assert not patch.last_stats(accelerated).notes
    forget_logged_tracebacks(caplog)
    assert live_tensors() - before <= LIVE_TENSOR_SLACK
    for model in (accelerated, failing):   # no run is left on the models' options
        assert patch.RUN_KEY not in model.model_options["transformer_options"]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_run_interrupted_from_the_callback_leaves_nothing_behind(flux, flux_conds, duca, preset):
    patch, _ = duca
    stop = interrupt()
    accelerated = accelerate(flux, preset)
    clean = sample(accelerated, *flux_conds)

    def press_stop(step, *_):
        if step == 4:   # past the first computed steps: caches are filled
            raise stop("interrupted")
    before = live_tensors()
    with pytest.raises(stop):
        sample(accelerated, *flux_conds, callback=press_stop)
    again = sample(accelerated, *flux_conds)
    assert torch.equal(again, clean)
    del again
    assert not patch.last_stats(accelerated).notes
    assert live_tensors() - before <= LIVE_TENSOR_SLACK
    assert patch.RUN_KEY not in accelerated.model_options["transformer_options"]
