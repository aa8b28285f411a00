"""Cache bytes per preset at Flux-dev (1024x1024) and Wan 2.1 14B (1280x720, 81 frames) sizes,
cond and uncond, in bf16, without a GPU: the pack runs on models of the published block width but
one or two blocks, at two small token counts; what it keeps grows linearly in blocks and tokens,
so a least-squares fit of the measured peaks (RunStats.peak_cache_bytes) over those runs gives
the full-size figure. The cache holds what the host's modules returned, so it is in the compute
dtype (bf16 here).

    python3 tools/host.py python bench/cache_bytes.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads  # noqa: E402

from testbed.models import FLUX_DEV, WAN21_14B  # noqa: E402  (the published sizes)

STEPS, CFG = 10, 3.5
SMALL_INPUTS = dict(context_in_dim=64, vec_in_dim=64)  # the text and vector inputs: not cached
FLUX_WIDTH = {**{k: v for k, v in FLUX_DEV.items() if k not in ("depth", "depth_single_blocks")}, **SMALL_INPUTS}
FLUX_DEV_RUN = dict(image_tokens=64 * 64, text_tokens=512)  # 1024x1024, T5 at 512 tokens
WAN_WIDTH = {**{k: v for k, v in WAN21_14B.items() if k != "num_layers"}, "text_dim": 64}
WAN_14B_RUN = dict(tokens=21 * 45 * 80)  # 1280x720, 81 frames: a 21 x 90 x 160 latent, 2x2 patches


def presets():
    from comfyui_duca.methods import FORECAST_PRESETS, PRESETS
    return {**{f"duca {n}": c for n, c in PRESETS.items()}, **{f"forecast {n}": c for n, c in FORECAST_PRESETS.items()}}


def peak_bytes(model, config, positive, negative, **kw) -> int:
    from testbed import models
    from comfyui_duca.glue.patch import apply_method, last_stats
    accelerated = apply_method(model, config)
    models.sample(accelerated, positive, negative, steps=STEPS, cfg=CFG, **kw)
    return last_stats(accelerated).peak_cache_bytes


def fit(rows: list, targets: list, at: list) -> float:
    """Least squares of targets over rows of features, evaluated at `at`."""
    solution = torch.linalg.lstsq(torch.tensor(rows, dtype=torch.float64),
                                  torch.tensor(targets, dtype=torch.float64)[:, None]).solution
    return float(torch.tensor(at, dtype=torch.float64) @ solution[:, 0])


def flux_rows(configs: dict) -> dict:
    """preset -> bytes at Flux-dev size. Features: per double / single block x sequence tokens,
    image tokens (the output points), and one."""
    from testbed import models
    measured = {name: ([], []) for name in configs}
    text = 8
    for double, single in ((1, 1), (2, 1), (1, 2)):
        model = models.flux(seed=0, dtype=torch.bfloat16, depth=double, depth_single_blocks=single, **FLUX_WIDTH)
        positive = models.flux_conditioning(model=model, seed=1, tokens=text)
        negative = models.flux_conditioning(model=model, seed=2, tokens=text)
        for side in (32, 64):
            image = (side // 16) ** 2
            seq = image + text
            for name, config in configs.items():
                rows, targets = measured[name]
                rows.append([double * seq, single * seq, image, 1])
                targets.append(peak_bytes(model, config, positive, negative, height=side, width=side))
        del model
    seq = FLUX_DEV_RUN["image_tokens"] + FLUX_DEV_RUN["text_tokens"]
    at = [FLUX_DEV["depth"] * seq, FLUX_DEV["depth_single_blocks"] * seq, FLUX_DEV_RUN["image_tokens"], 1]
    return {name: fit(rows, targets, at) for name, (rows, targets) in measured.items()}


def wan_rows(configs: dict) -> dict:
    from testbed import models
    measured = {name: ([], []) for name in configs}
    for layers in (1, 2):
        model = models.wan(seed=0, dtype=torch.bfloat16, num_layers=layers, **WAN_WIDTH)
        positive = models.text_conditioning(WAN_WIDTH["text_dim"], seed=1)
        negative = models.text_conditioning(WAN_WIDTH["text_dim"], seed=2)
        for frames, side in ((1, 4), (2, 8)):  # latent frames and sides
            tokens = frames * (side // 2) ** 2
            latent = models.video_latent(frames=frames, height=side, width=side)
            for name, config in configs.items():
                rows, targets = measured[name]
                rows.append([layers * tokens, tokens, 1])
                targets.append(peak_bytes(model, config, positive, negative, latent=latent))
        del model
    at = [WAN21_14B["num_layers"] * WAN_14B_RUN["tokens"], WAN_14B_RUN["tokens"], 1]
    return {name: fit(rows, targets, at) for name, (rows, targets) in measured.items()}


def size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def main() -> int:
    workloads.boot(None, cpu=True)
    configs = presets()
    flux, wan = flux_rows(configs), wan_rows(configs)
    print(f"cache at full size, bf16, cond + uncond, {STEPS}-step runs fitted")
    print("| preset | Flux-dev 1024x1024 | Wan 2.1 14B 1280x720x81 |")
    print("|---|---|---|")
    for name in configs:
        print(f"| {name} | {size(flux[name])} | {size(wan[name])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
