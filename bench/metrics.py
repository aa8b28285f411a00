"""Fidelity and memory measures of the evaluation harness.

Pictures are [batch, 3, H, W] tensors in [-1, 1] (data range 2); latents are
compared in model space. Every score is against the uncached output of the
same seed and conditioning.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import torch
import torch.nn.functional as F

PICTURE_RANGE = 2.0  # pixels in [-1, 1]
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(x: torch.Tensor, reference: torch.Tensor, data_range: float) -> float:
    """10 log10(range^2 / MSE); inf for identical tensors."""
    mse = (x.double() - reference.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def latent_psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR on latents; the range is max - min of the reference latent."""
    return psnr(x, reference, (reference.max() - reference.min()).item())


def rel_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - reference|| / ||reference||."""
    ref = reference.double()
    return ((x.double() - ref).norm() / ref.norm()).item()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, reference: torch.Tensor, data_range: float = PICTURE_RANGE) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window of sigma 1.5, K1 0.01,
    K2 0.03, per channel, over the positions where the window fits (no padding)."""
    x, y = x.double(), reference.double()
    if x.ndim == 3:
        x, y = x[None], y[None]
    channels = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    window = gaussian_window(size).expand(channels, 1, size, size)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.mean().item()


# --- peak memory of one sampling run -------------------------------------------------

CPU_MEMORY_METHOD = ("peak of live torch CPU allocations above the level at the start of the run, "
                     "from torch.profiler memory events (one extra untimed run per method)")
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated during the run minus memory_allocated at its "
                      "start (the first timed run of each method)")


def peak_memory(run, device: torch.device):
    """Calls run() and returns (peak extra bytes, method text); bytes is None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start, CUDA_MEMORY_METHOD
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    try:
        events = [(_start(e), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None, CPU_MEMORY_METHOD
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak, CPU_MEMORY_METHOD


@contextlib.contextmanager
def quiet_stderr():
    """The profiler's C++ side logs two lines per run to fd 2: send them nowhere."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _start(event):
    return event.start_ns() if hasattr(event, "start_ns") else event.start_us() * 1000
