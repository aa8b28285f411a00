"""What a forecast run handed the sampler, checked against the forecast recomputed from it: the
sampler's post-cfg hook records cond's and uncond's denoised outputs per step, and on each skipped
step each must be the linear forecast, in sigma, of the noise that same conditioning implied on
its own last two computed steps, or held from the one computed so far (points shared between
conditionings would show).

Sample such runs with SAMPLER: under the samplers whose gaps are corrected (Euler's method,
DPM-Solver++(2M): cache_core.sampler_steps) a computed step after a gap hands on the gap's
correction too and keeps the corrected point (methods.forecast), which this view cannot take apart
from the model's output."""
import torch

SAMPLER = "lms"  # one model call per step, as Euler's method, and left uncorrected


def recording(model):
    """(a clone of `model` that records each step's post-cfg view, the list it records into)."""
    seen = []

    def record(args):
        seen.append({k: args[k].clone() for k in ("input", "cond_denoised", "uncond_denoised")}
                    | {"sigma": float(args["sigma"][0])})
        return args["denoised"]
    recorded = model.clone()
    recorded.set_model_sampler_post_cfg_function(record)
    return recorded, seen


def assert_forecast_from_own_points(seen: list, timeline: str) -> None:
    """For a flow model (samples x = (1 - sigma) x0 + sigma n), as Flux is."""
    def noise(step, key):
        s = seen[step]
        return (s["input"] - (1 - s["sigma"]) * s[key]) / s["sigma"]
    assert len(seen) == len(timeline) and "E" in timeline
    full = []
    for step, action in enumerate(timeline):
        if action == "F":
            full.append(step)
            continue
        for key in ("cond_denoised", "uncond_denoised"):
            k = full[-1]
            expected = noise(k, key)  # one computed step so far: held
            if len(full) > 1:
                j = full[-2]
                slope = (noise(k, key) - noise(j, key)) / (seen[k]["sigma"] - seen[j]["sigma"])
                expected = expected + slope * (seen[step]["sigma"] - seen[k]["sigma"])
            assert torch.allclose(noise(step, key), expected, rtol=1e-4, atol=1e-4), (step, key)
    assert not torch.allclose(seen[-1]["cond_denoised"], seen[-1]["uncond_denoised"])
