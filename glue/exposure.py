"""Exposure-bias correction (EB-Cache), for every model type ComfyUI samples.

EB-Cache divides the predicted noise by delta before x0 is predicted. Every ComfyUI
sampler integrates d = (x - D) / sigma, where D is the model's denoised output:
- epsilon models (x = x0 + sigma * eps): d is exactly the predicted noise, so eps / delta
  is d / delta;
- flow-matching models (x = (1 - sigma) * x0 + sigma * eps): d = eps - x0, the velocity.
  Dividing eps alone by delta would need x0 = (x - sigma * eps') / (1 - sigma), singular at
  sigma = 1 where flow schedules start; the well-defined equivalent divides the velocity.
Both are one operation on the denoised output, D' = x - (x - D) / delta, applied after CFG
(where the sampler reads it), so it composes with any accelerator of this pack.
"""
from __future__ import annotations

POST_CFG_KEY = "duca_exposure_bias"


def corrected_denoised(x, denoised, delta: float):
    return x - (x - denoised) / delta


def exposure_bias_function(delta: float):
    def correct(args: dict):
        return corrected_denoised(args["input"], args["denoised"], delta)
    correct.duca_key = POST_CFG_KEY
    return correct


def apply_exposure_bias(model, delta: float):
    """A clone of `model` whose denoised output is corrected; delta = 1 leaves it unchanged."""
    if not 0.5 <= delta <= 1.5:
        raise ValueError(f"delta must be in [0.5, 1.5], got {delta}")
    patched = model.clone()
    options = patched.model_options
    # applied twice: the last delta wins instead of stacking
    options["sampler_post_cfg_function"] = [f for f in options.get("sampler_post_cfg_function", [])
                                            if getattr(f, "duca_key", None) != POST_CFG_KEY]
    if delta != 1.0:
        patched.set_model_sampler_post_cfg_function(exposure_bias_function(delta))
    return patched
