"""A step's conditionings evaluated concurrently on worker threads against the same run, as the host's
multi-GPU CFG split does (newer ComfyUI: one thread per device under the cond-batch level). A CPU
has one device, so a cond-batch wrapper inside the pack's splits each step's conditionings over
two threads, the way the host's split hands them out; the same split run one after the other is the
reference. What a method keeps per call must stay with its thread. On a host with the split, the
fallback test also runs the host's own multi-GPU path (with the one CPU device as its only device)."""
import dataclasses
import logging
import threading

import torch

from testbed import models

KW = dict(steps=16, cfg=3.0, height=64, width=64)


def split_over_threads(concurrently: bool):
    """A CALC_COND_BATCH wrapper: each conditioning slot computed by its own call of the host's
    cond batch, on its own thread (at once, with a barrier so both are inside the model together)
    or one after the other."""
    def wrapper(executor, model, conds, x_in, timestep, model_options):
        filled = [i for i, cond in enumerate(conds) if cond is not None]
        outputs = [None] * len(conds)
        barrier = threading.Barrier(len(filled)) if concurrently else None
        errors = []

        def one(i):
            try:
                if barrier is not None:
                    barrier.wait(timeout=30)
                only = [cond if j == i else None for j, cond in enumerate(conds)]
                outputs[i] = executor(model, only, x_in, timestep, model_options)[i]
            except BaseException as error:  # re-raised on the sampling thread
                errors.append(error)
        if concurrently:
            threads = [threading.Thread(target=one, args=(i,)) for i in filled]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for i in filled:
                one(i)
        if errors:
            raise errors[0]
        return [torch.zeros_like(x_in) if out is None else out for out in outputs]
    return wrapper


def with_split(model, concurrently: bool):
    import comfy.patcher_extension as ext
    split = model.clone()
    split.add_wrapper_with_key(ext.WrappersMP.CALC_COND_BATCH, "split_over_threads", split_over_threads(concurrently))
    return split


def test_a_steps_conditionings_on_two_threads_give_the_single_thread_result(pack, duca, flux, flux_conds):
    """The forecast decides over the whole cond batch, above the split: the threads only compute."""
    patch, core = duca
    accelerated = patch.apply_method(flux, core.FORECAST_PRESETS["balanced"])
    sequential, threaded = with_split(accelerated, concurrently=False), with_split(accelerated, concurrently=True)
    one_after_the_other = models.sample(sequential, *flux_conds, **KW)
    at_once = models.sample(threaded, *flux_conds, **KW)
    reference_stats, stats = patch.last_stats(sequential), patch.last_stats(threaded)
    assert torch.equal(at_once, one_after_the_other)
    assert stats.timeline == reference_stats.timeline and "E" in stats.timeline and not stats.notes
    assert stats.compute_fraction == reference_stats.compute_fraction < 0.5


def test_under_the_hosts_multigpu_split_block_caching_forecasts_whole_steps(pack, duca, flux, flux_conds, caplog):
    """Each device runs its own deep copy of the blocks, which a run's block hooks do not follow:
    DuCa's presets then run the forecast's preset of the same name, said in one log line."""
    patch, core = duca
    duca_fast = dataclasses.replace(core.PRESETS["fast"], preset="fast")  # as the node's "duca fast" makes it
    accelerated = with_split(patch.apply_method(flux, duca_fast), concurrently=True)
    import comfy.samplers
    if hasattr(comfy.samplers, "_calc_cond_batch_multigpu"):  # a host with the split: its own path, one device
        accelerated.model_options[patch.MULTIGPU_CLONES] = {accelerated.load_device: accelerated}
    else:  # what the host's MultiGPU node sets, on a host that cannot run it (nothing else reads it)
        accelerated.model_options[patch.MULTIGPU_CLONES] = {}
    with caplog.at_level(logging.INFO, logger="comfyui-duca"):
        out = models.sample(accelerated, *flux_conds, **KW)
    stats = patch.last_stats(accelerated)
    lines = [r.getMessage() for r in caplog.records if r.name == "comfyui-duca" and "multi-GPU" in r.getMessage()]
    assert len(lines) == 1 and "fast" in lines[0]
    assert stats.method == "forecast fast" and stats.level == "step"
    forecast = with_split(patch.apply_method(flux, core.FORECAST_PRESETS["fast"]), concurrently=False)
    assert torch.equal(out, models.sample(forecast, *flux_conds, **KW))
