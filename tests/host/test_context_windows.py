"""The budget presets under the host's context windows (ContextWindowsManual: a long video
sampled window by window, each window a cond batch of its own): every window is forecast from
its own computed steps, and a plan that computes everything changes nothing."""
import inspect

import pytest
import torch

from testbed import host, models

host.load_pack()
from comfyui_duca.methods.forecast import FEW_STEPS  # noqa: E402

STEPS = FEW_STEPS  # the fewest steps the presets skip at
FRAMES = 6  # latent frames: windows of 4 overlapping by 2, so two windows per step


def windowed(model):
    import comfy.context_windows as windows
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode
    # newer hosts added required inputs (freenoise): passed where the node's signature has them
    newer = {"freenoise": False} if "freenoise" in inspect.signature(ContextWindowsManualNode.execute).parameters else {}
    out = ContextWindowsManualNode.execute(model, 4, 2, windows.ContextSchedules.STATIC_STANDARD, 1, False,
                                           windows.ContextFuseMethods.PYRAMID, 2, **newer)
    return out.result[0]


def accelerate(model, preset, **inputs):
    (out,) = host.node("DuCaAccelerate").execute(model, preset, **inputs).result
    return out


def sample(model, conds):
    return models.sample(model, *conds, steps=STEPS, cfg=4.0, latent=models.video_latent(frames=FRAMES))


def relative_l2(out, reference):
    return float((out - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def wan(pack):
    return models.wan(seed=5, num_layers=2)


@pytest.fixture(scope="module")
def conds():
    return models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)


def test_a_forecast_that_computes_every_step_is_bit_identical_under_context_windows(wan, conds):
    reference = sample(windowed(wan), conds)
    assert torch.equal(sample(accelerate(windowed(wan), "balanced", budget=1.0), conds), reference)


def test_each_context_window_is_forecast_from_its_own_steps(wan, conds, duca):
    """Windows sharing one forecast would extrapolate one window's frames into another's: the
    windowed run would then be much further from its uncached output than the plain run is."""
    patch, _ = duca
    plain_error = relative_l2(sample(accelerate(wan, "balanced"), conds), sample(wan, conds))
    model = accelerate(windowed(wan), "balanced")
    windowed_error = relative_l2(sample(model, conds), sample(windowed(wan), conds))
    stats = patch.last_stats(model)
    assert set(stats.timeline) == {"F", "E"} and not stats.notes
    assert [stats.steps[i].model_calls for i in range(STEPS)] == [2] * STEPS  # one cond batch per window
    assert 0 < windowed_error < 2 * plain_error + 0.01, (windowed_error, plain_error)
