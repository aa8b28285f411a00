"""The gap correction: a gap of forecast steps replayed through the sampler's own step with the
interpolated re-estimates, and the step that ends it landing where the sampler would have stepped.
The samplers here are cache_core.sampler_steps' affine steps (checked against the host's own
sampler functions in tests/host/test_sampler_steps.py)."""
import math

import pytest
import torch

from comfyui_duca.cache_core.estimators import taylor
from comfyui_duca.cache_core.gap_correction import replay_gap
from comfyui_duca.cache_core.noise_space import SampleSpace
from comfyui_duca.cache_core.sampler_steps import dpmpp_2m, euler, linear_steps

SIGMAS = [1.0, 0.86, 0.72, 0.6, 0.47, 0.35, 0.24, 0.14, 0.0]
NOISE = SampleSpace()  # a = 1, b = sigma below: x = x0 + sigma n


def noise_at(sigma):  # a smooth noise estimate of degree 2 in sigma, the same at any sample
    return torch.tensor([0.3 - 0.8 * sigma + 0.5 * sigma ** 2, 1.2 * sigma ** 2], dtype=torch.float64)


def full_run(x, steps):
    previous = None
    for i, sigma in enumerate(SIGMAS[:-1]):
        denoised = NOISE.to_denoised(x, noise_at(sigma), 1.0, sigma)
        x, previous = steps(SIGMAS, i)(x, denoised, previous), denoised
    return x


def run_with_gaps(x, steps, computed: set, correct: bool, make_up_history: bool = True):
    """A run that computes only `computed` steps and forecasts the others (order 1), handled as the
    forecast method does: a gap corrected at its end, a multistep history made up after it."""
    points, gap, held = [], None, None  # held: (output handed on, output meant) of the last step
    for i, sigma in enumerate(SIGMAS[:-1]):
        step = steps(SIGMAS, i)
        if i in computed:
            value = noise_at(sigma)
            meant = NOISE.to_denoised(x, value, 1.0, sigma)
            handed = meant
            if correct and gap:
                replayed = [(s, steps(SIGMAS, j), lambda y, v, s=s: NOISE.to_denoised(y, v, 1.0, s))
                            for s, j in gap["steps"]]
                sample, value, last = replay_gap(gap["start"], gap["held"], replayed, points, (sigma, value), x, 0.0)
                meant = NOISE.to_denoised(sample, value, 1.0, sigma)
                handed = step.handed(x, step(sample, meant, last), held and held[0])
            elif correct and make_up_history and held is not None and step.before:
                handed = meant + step.before / step.now * (held[1] - held[0])
            points, gap = (points + [(sigma, value)])[-3:], None
        else:
            meant = NOISE.to_denoised(x, taylor(points, sigma, 1), 1.0, sigma)
            if gap is None:
                gap = {"start": x, "held": held and held[1], "steps": []}
            gap["steps"].append((sigma, i))
            handed = meant
            if correct and make_up_history and held is not None and step.before:
                handed = meant + step.before / step.now * (held[1] - held[0])
        x, held = step(x, handed, held and held[0]), (handed, meant)
    return x


@pytest.mark.parametrize("steps", [euler, dpmpp_2m])
def test_corrected_gaps_land_on_the_full_run_when_the_noise_is_quadratic(steps):
    start = torch.tensor([1.5, -0.7], dtype=torch.float64)
    computed = {0, 1, 2, 5, 7}
    reference = full_run(start, steps)
    uncorrected = run_with_gaps(start, steps, computed, correct=False)
    corrected = run_with_gaps(start, steps, computed, correct=True)
    assert not torch.allclose(uncorrected, reference, atol=1e-4)  # the linear forecast misses the curve
    assert torch.allclose(corrected, reference, atol=1e-12)


def test_a_multistep_history_left_as_handed_misses_the_full_run():
    """DPM++ 2M holds the previous output, and a gap's last step hands on a landing, not a value:
    the step after it must make up the history. Exact with it (1e-12), off without."""
    start = torch.tensor([1.5, -0.7], dtype=torch.float64)
    computed = {0, 1, 2, 5, 6, 7}
    reference = full_run(start, dpmpp_2m)
    assert torch.allclose(run_with_gaps(start, dpmpp_2m, computed, True), reference, atol=1e-12)
    assert not torch.allclose(run_with_gaps(start, dpmpp_2m, computed, True, make_up_history=False), reference,
                              atol=1e-4)


def test_replay_moves_the_new_value_by_the_sensitivity_in_closed_form():
    """The value at the corrected sample is the value plus sensitivity x (corrected - sample), and
    the corrected sample is the replay with that value."""
    before = [(0.9, torch.tensor([0.2, 0.1])), (0.7, torch.tensor([0.4, -0.3]))]
    gap = [(s, euler([0.7, 0.6, 0.5, 0.4], i), lambda y, v, s=s: NOISE.to_denoised(y, v, 1.0, s))
           for i, s in ((1, 0.6), (2, 0.5))]
    start, sample, new = torch.tensor([1.0, 0.5]), torch.tensor([0.8, 0.6]), (0.4, torch.tensor([0.9, 0.5]))
    corrected, moved, _ = replay_gap(start, None, gap, before, new, sample, 0.8)
    plain, _, _ = replay_gap(start, None, gap, before, new, sample, 0.0)
    again, _, _ = replay_gap(start, None, gap, before, (0.4, moved), sample, 0.0)
    assert not torch.allclose(corrected, plain)
    assert torch.allclose(moved, new[1] + 0.8 * (corrected - sample), atol=1e-6)
    assert torch.allclose(again, corrected, atol=1e-6)


@pytest.mark.parametrize("steps", [euler, dpmpp_2m])
def test_a_step_hands_on_what_lands_it_where_asked(steps):
    x, previous, wanted = torch.tensor([1.0, 2.0]), torch.tensor([0.3, 0.1]), torch.tensor([0.5, 1.5])
    for i in range(len(SIGMAS) - 1):
        step = steps(SIGMAS, i)
        assert torch.allclose(step(x, step.handed(x, wanted, previous), previous), wanted, atol=1e-5)
        # a denoised output equal to the sample leaves it where it is: the weights sum to one
        assert step.keep + step.now + step.before == pytest.approx(1.0)


def test_samplers_are_named_by_the_hosts_functions():
    assert linear_steps("sample_euler") == (euler, False) and linear_steps("sample_dpmpp_2m") == (dpmpp_2m, True)
    assert linear_steps("sample_uni_pc") is None and linear_steps("sample_euler_ancestral") is None


@pytest.mark.parametrize("spread", [0.0, 0.5, 2.0, math.inf])
def test_sample_space_round_trips(spread):
    space, x, denoised = SampleSpace(spread), torch.tensor([0.7, -1.2]), torch.tensor([0.2, 0.4])
    for a, b in ((0.5, 0.5), (1.0, 3.0), (0.9, 0.1)):
        assert torch.allclose(space.to_denoised(x, space.to_value(x, denoised, a, b), a, b), denoised, atol=1e-5)


def test_noise_space_is_the_infinite_spread():
    x, denoised, a, b = torch.tensor([0.7, -1.2]), torch.tensor([0.2, 0.4]), 0.6, 0.4
    assert torch.allclose(SampleSpace().to_value(x, denoised, a, b), (x - a * denoised) / b)
    assert torch.allclose(SampleSpace(0.0).to_value(x, denoised, a, b), denoised)


def test_the_value_does_not_move_with_noise_injected_into_the_sample():
    """The ideal denoiser of Gaussian data with the space's spread: fresh noise in the sample moves
    its output, not the value the forecast carries; a space of another spread sees it move."""
    mean, spread, a, b = torch.tensor([0.3, -0.2]), 0.5, 0.7, 0.6
    gain = a * spread ** 2 / (a * a * spread ** 2 + b * b)

    def denoiser(x):
        return mean + gain * (x - a * mean)
    x, injected = torch.tensor([0.9, 0.1]), torch.tensor([0.25, -0.4])
    right, wrong = SampleSpace(spread), SampleSpace(math.inf)
    assert torch.allclose(right.to_value(x, denoiser(x), a, b), right.to_value(x + injected, denoiser(x + injected), a, b))
    assert not torch.allclose(wrong.to_value(x, denoiser(x), a, b), wrong.to_value(x + injected, denoiser(x + injected), a, b))
    assert right.sensitivity(a, b, spread) == pytest.approx(0.0)
    assert SampleSpace().sensitivity(1.0, 80.0, 0.5) == pytest.approx(1 / 80.0, rel=1e-3)  # follows the sample
    assert SampleSpace().sensitivity(1.0, 0.01, 0.5) == pytest.approx(0.01 / 0.25, rel=1e-3)  # settled
