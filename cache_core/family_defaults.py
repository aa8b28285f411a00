"""Per-family settings behind the presets, chosen by measurement (bench/family_defaults.py).

When the user picks a preset (not "custom"), an adapter swaps in its family's interval,
refresh ratio and first full steps for that preset. A family or preset missing here keeps
the papers' Flux settings (config.PRESETS). first_full_steps is the user's when it differs
from the preset's own value (the node always sends one; an untouched input is the preset's).
"""
from __future__ import annotations

from .config import PRESETS, DuCaConfig

# How chosen: `python3 scripts/host.py python bench/family_defaults.py` (table in bench/RESULTS.md):
# 20 steps, euler/simple, cfg > 1, seeds 0 and 1; intervals 2-8 x refresh ratios 0.05-0.3
# (token-wise families) x first full steps 1-4. Per preset, the setting with the best latent
# PSNR to the uncached output at the preset's block compute budget (the papers' setting's on
# the same model, quality >= balanced + 5 points, fast <= balanced - 5), unless the papers'
# setting is in that band and within 0.5 dB of it. Settings are (interval, refresh ratio,
# first full steps), the same keys as DuCaConfig.
RANDOM = "measured on the small model(s) of the host's class with random weights"
HOW_CHOSEN = {
    "flux": "papers' (tuned on Flux-dev); the small trained Flux preferred 4/0.05/4, 5/0.05/4, 4/0.1/1 "
            "by about 2 dB (bench/RESULTS.md)",
    "wan": f"{RANDOM} (Wan 2.1 t2v and i2v, Wan 2.2 5B); balanced: papers', no setting won by 0.5 dB",
    "hunyuan-video": RANDOM,
    "ltxv": f"{RANDOM}; balanced: papers', no setting won by 0.5 dB",
    "auraflow": RANDOM,
    "qwen-image": f"{RANDOM} (Qwen-Image and Qwen-Image-Edit); block level",
    "sd3": f"{RANDOM}; block level; balanced: papers'",
    "mochi": f"{RANDOM}; block level; balanced: papers'",
    "lumina2": f"{RANDOM} (Lumina 2 and Z-Image); step level; balanced: papers'",
    "hidream": f"{RANDOM}; step level; balanced and fast: papers'",
    "cosmos-predict2": f"{RANDOM}; step level; balanced and fast: papers'",
}


def _settings(*triples) -> dict:
    return {preset: {"interval": i, "refresh_ratio": r, "first_full_steps": f}
            for preset, (i, r, f) in zip(("quality", "balanced", "fast"), triples)}


# family (the adapter's) -> preset -> settings; quality, balanced, fast
defaults: dict = {
    "flux": _settings((3, 0.15, 3), (4, 0.1, 3), (6, 0.1, 3)),
    "wan": _settings((4, 0.3, 3), (4, 0.1, 3), (6, 0.3, 1)),
    "hunyuan-video": _settings((3, 0.3, 1), (3, 0.05, 1), (6, 0.2, 1)),
    "ltxv": _settings((4, 0.1, 4), (4, 0.1, 3), (6, 0.2, 1)),
    "auraflow": _settings((4, 0.1, 4), (3, 0.05, 1), (4, 0.1, 1)),
    "qwen-image": _settings((4, 0.1, 4), (4, 0.1, 4), (3, 0.1, 1)),
    "sd3": _settings((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)),
    "mochi": _settings((4, 0.1, 3), (4, 0.1, 3), (3, 0.1, 1)),
    "lumina2": _settings((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)),
    "hidream": _settings((4, 0.1, 4), (4, 0.1, 3), (6, 0.1, 3)),
    "cosmos-predict2": _settings((4, 0.1, 4), (4, 0.1, 3), (6, 0.1, 3)),
}


def family_settings(family: str, preset) -> dict:
    """interval / refresh_ratio / first_full_steps of `preset` for `family` ({} if none)."""
    return dict(defaults.get(family, {}).get(preset, {}))


def for_family(config: DuCaConfig, family: str) -> DuCaConfig:
    """`config` with its family's settings for the preset it came from (unchanged for custom
    settings, fixed plans and families measured to keep the papers' settings)."""
    if config.preset is None or config.plan is not None:
        return config
    settings = family_settings(family, config.preset)
    if config.first_full_steps != PRESETS[config.preset].first_full_steps:
        settings.pop("first_full_steps", None)  # set by the user
    return config.with_changes(**settings) if settings else config
