"""The flagship node: "Accelerate (DuCa)"."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.store import CACHE_DEVICES
from ..cache_core.tokens import SELECTORS
from ..glue.patch import apply_duca
from ..glue.ui import node_reporter
from ..methods import PRESETS, ScheduleConfig
from ..methods.duca import AUTO, ESTIMATOR_CHOICES
from .base import CATEGORY, SCHEDULE, check_options, model_output, shows_stats, step_window_inputs

CUSTOM = "custom"


class AccelerateDuCa(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        balanced = PRESETS["balanced"]
        return io.Schema(
            node_id="DuCaAccelerate",
            display_name="Accelerate (DuCa)",
            category=CATEGORY,
            description=("Samples faster by reusing features across steps (DuCa dual caching): full steps, then "
                         "conservative steps (a fraction of tokens recomputed) alternating with aggressive steps "
                         "(the whole block stack reused). No training, weights unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (from your loader)."),
                io.Combo.Input("preset", options=list(PRESETS) + [CUSTOM], default="balanced", tooltip=(
                    "quality / balanced / fast: on Flux a full step every 3rd / 4th (the papers' setting) / 6th "
                    "step; other families use settings measured for them (README). custom: use the advanced "
                    "inputs below.")),
                io.Int.Input("interval", default=balanced.interval, min=1, max=100, step=1, optional=True,
                             tooltip="custom only: a full step every N steps; the steps between alternate "
                                     "conservative and aggressive."),
                io.Float.Input("refresh_ratio", default=balanced.refresh_ratio, min=0.0, max=1.0, step=0.01,
                               optional=True, tooltip="custom only: base fraction of tokens recomputed on "
                                                      "conservative steps (scaled per layer and stream)."),
                io.Combo.Input("token_selector", options=list(SELECTORS), default=balanced.token_selector,
                               optional=True, tooltip=(
                                   "Which tokens a conservative step recomputes. value_norm: V-caching score "
                                   "(works with fused attention). value_norm_spread: also spread over the image. "
                                   "random: seeded random pick.")),
                io.Int.Input("first_full_steps", default=balanced.first_full_steps, min=0, max=1000, step=1,
                             optional=True, tooltip="The first steps are always computed (they set the composition)."),
                *step_window_inputs(),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="compute", optional=True,
                               tooltip="compute: keep caches on the GPU (fastest). cpu: offload them to RAM "
                                       "(saves VRAM, costs transfers)."),
                SCHEDULE.Input("schedule", optional=True, tooltip=(
                    "Optional: a cache schedule (FORA, EB-Cache, Block Caching, L2C) that decides per block and "
                    "step instead of the preset's cycle.")),
                io.Combo.Input("estimator", options=list(ESTIMATOR_CHOICES), default=AUTO, optional=True, tooltip=(
                    "What a skipped step hands on. auto: what was measured best for the model's family (U-Nets: "
                    "taylor2, the others: reuse). reuse: the last computed value. taylor1 / taylor2: a forecast "
                    "through the last 2 / 3 computed steps. spectrum: a fit over all computed steps.")),
            ],
            outputs=[model_output("The model with caching attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, preset=None, token_selector=None, cache_device=None, estimator=None) -> bool | str:
        return check_options(cls, preset=preset, token_selector=token_selector, cache_device=cache_device,
                             estimator=estimator)

    @classmethod
    def execute(cls, model, preset="balanced", interval=None, refresh_ratio=None, token_selector=None,
                first_full_steps=None, start_percent=0.0, end_percent=1.0, cache_device="compute",
                schedule=None, estimator=AUTO) -> io.NodeOutput:
        config = build_config(preset, interval, refresh_ratio, token_selector, first_full_steps,
                              start_percent, end_percent, cache_device, estimator)
        if schedule is not None:
            config = ScheduleConfig(schedule, cache_device=cache_device)
        return io.NodeOutput(apply_duca(model, config, listeners=[node_reporter(cls.hidden.unique_id)]))


def build_config(preset, interval, refresh_ratio, token_selector, first_full_steps, start, end, cache_device,
                 estimator=AUTO):
    if preset not in PRESETS and preset != CUSTOM:
        raise ValueError(f"preset must be one of {list(PRESETS) + [CUSTOM]}, got {preset!r}")
    base = PRESETS.get(preset, PRESETS["balanced"])
    changes = {"start": start, "end": end, "cache_device": cache_device, "estimator": estimator}
    if token_selector is not None:
        changes["token_selector"] = token_selector
    if first_full_steps is not None:
        changes["first_full_steps"] = first_full_steps
    if preset == CUSTOM:
        if interval is not None:
            changes["interval"] = interval
        if refresh_ratio is not None:
            changes["refresh_ratio"] = refresh_ratio
    else:
        changes["preset"] = preset  # the adapter swaps in the model family's settings for it
    return base.with_changes(**changes)
