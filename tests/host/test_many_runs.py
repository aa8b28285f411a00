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
CASES = {  # name: (model fixture, pack node, its inputs, cfg)
    "flux balanced": ("flux", "DuCaAccelerate", {"preset": "balanced"}, 3.5),
    "flux duca balanced": ("flux", "DuCaAccelerate", {"preset": "duca balanced"}, 3.5),
    "unet balanced": ("unet", "DuCaAccelerate", {"preset": "balanced"}, 4.0),
    "unet deepcache": ("unet", "DuCaDeepCache", {"cache_interval": 3, "cache_depth": 0}, 4.0),
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
    fixture, node, inputs, cfg = CASES[case]
    model = request.getfixturevalue(fixture)
    positive, negative = conditionings(fixture, model)
    (accelerated,) = host.node(node).execute(model, **inputs).result
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
