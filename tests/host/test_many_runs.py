"""Many runs in one session: fifty samples in a row through one accelerated model, alternating
resolutions and batch sizes, as a user queueing prompts does. Live tensor memory must stay flat:
after the first round of sizes, every later round ends holding exactly what the first one held
(counted over the tensors Python can reach, by their storages; on a GPU, also the allocator's
count of bytes in use).
"""
import gc
import warnings

import pytest
import torch

from testbed import host, models

RUNS = 50
STEPS = 6
# (height, width, batch) in turn: three resolutions, two batch sizes
SIZES = [(64, 64, 1), (96, 64, 2), (64, 96, 1), (96, 96, 2), (64, 64, 2)]


def node(node_id, **inputs):
    return lambda model: host.node(node_id).execute(model, **inputs).result[0]


def balanced_forecast(model):
    """The balanced preset's forecast settings without the preset: a preset computes every step
    of a run this short (methods.forecast.FEW_STEPS), these settings still skip."""
    from comfyui_duca.glue.patch import apply_method
    from comfyui_duca.methods import FORECAST_PRESETS
    return apply_method(model, FORECAST_PRESETS["balanced"].with_changes(preset=None))


CASES = {  # name: (model fixture, what accelerates it, cfg)
    "flux balanced": ("flux", balanced_forecast, 3.5),
    "flux duca balanced": ("flux", node("DuCaAccelerate", preset="duca balanced"), 3.5),
    "unet balanced": ("unet", balanced_forecast, 4.0),
    "unet deepcache": ("unet", node("DuCaDeepCache", cache_interval=3, cache_depth=0), 4.0),
}


def live_tensor_bytes() -> tuple:
    """(live tensors, bytes of their distinct storages) reachable from Python."""
    gc.collect()
    count, storages = 0, {}
    with warnings.catch_warnings():  # asking deprecated torch objects warns
        warnings.simplefilter("ignore", FutureWarning)
        for obj in gc.get_objects():
            try:
                if not torch.is_tensor(obj):
                    continue
                storage = obj.untyped_storage()
            except Exception:  # objects that can't answer (half-built, or not real tensors)
                continue
            count += 1
            storages[(storage.data_ptr(), storage.device)] = storage.nbytes()
    return count, sum(storages.values())


def device_bytes() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def conditionings(name, model):
    if name == "flux":
        return models.flux_conditioning(model=model, seed=1), models.flux_conditioning(model=model, seed=2)
    return models.class_conditioning(model, 0), models.class_conditioning(model, -1)


@pytest.mark.parametrize("case", list(CASES))
def test_fifty_runs_at_alternating_sizes_hold_live_memory_flat(request, duca, case):
    patch, _ = duca
    fixture, accelerate, cfg = CASES[case]
    model = request.getfixturevalue(fixture)
    positive, negative = conditionings(fixture, model)
    accelerated = accelerate(model)
    channels = 16 if fixture == "flux" else 4
    rounds = []
    for run in range(RUNS):
        height, width, batch = SIZES[run % len(SIZES)]
        out = models.sample(accelerated, positive, negative, steps=STEPS, cfg=cfg, batch=batch, height=height,
                            width=width, channels=channels, seed=run)
        assert out.shape == (batch, channels, height // 8, width // 8) and torch.isfinite(out).all()
        stats = patch.last_stats(accelerated)
        assert set(stats.timeline) != {"F"} and not stats.notes, (run, stats.timeline, stats.notes)
        del out, stats
        if run % len(SIZES) == len(SIZES) - 1:
            rounds.append((*live_tensor_bytes(), device_bytes()))
    first = rounds[0]
    assert all(r == first for r in rounds[1:]), f"live (tensors, bytes, device bytes) per round: {rounds}"
