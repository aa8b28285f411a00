"""The flagship node as it was until its inputs moved to the options and custom-cycle nodes: kept
under its id, out of the node search, so workflows saved with it load and run as they did."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.store import CACHE_DEVICES
from ..cache_core.tokens import SELECTORS
from ..cache_core.validate import check_choice
from ..glue.patch import apply_method
from ..glue.ui import node_reporter
from ..methods import FORECAST_PRESETS, PRESETS, ScheduleConfig
from ..methods.common import AUTO, ESTIMATOR_CHOICES
from ..methods.forecast import PLACEMENTS
from ..methods.settings import CUSTOM, DUCA, build_config, forecast_config
from .base import CATEGORY, SCHEDULE, check_options, model_output, shows_stats, step_window_inputs

PRESET_CHOICES = (*FORECAST_PRESETS, *(DUCA + name for name in PRESETS), CUSTOM)
PRESET_FIRST_STEPS = -1  # first_full_steps: the preset's own (a saved workflow's number keeps its meaning)


class AccelerateDuCaLegacy(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        balanced = PRESETS["balanced"]
        return io.Schema(
            node_id="DuCaAccelerate",
            display_name="Accelerate (DuCa, 13 inputs)",
            category=CATEGORY,
            is_deprecated=True,
            description=("Deprecated: the Accelerate (DuCa) node now takes a preset, with Accelerate Options and "
                         "DuCa Cycle (custom) for the rest; this one stays so saved workflows keep running. "
                         "Samples faster by computing the model on a fraction of the steps and forecasting it "
                         "on the others (quality / balanced / fast / turbo: about 45 / 35 / 27 / 20% of the model's "
                         "compute, on every family). The duca presets and custom run DuCa dual caching: full "
                         "steps, then conservative steps (a fraction of tokens recomputed) alternating with "
                         "aggressive steps (the whole block stack reused). No training, weights unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (from your loader)."),
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default="balanced", tooltip=(
                    "quality / balanced / fast / turbo: the model runs on 45 / 35 / 27 / 20% of the steps (the "
                    "first steps always) and the others are forecast from the computed ones (with euler and "
                    "dpmpp_2m, each run of forecast steps is corrected once the step after it computes; under "
                    "14 steps or with lcm every step computes). duca quality / "
                    "balanced / fast: DuCa's cycles (on Flux a full step every 3rd / 4th / 6th step; other "
                    "families use settings measured for them, README). custom: DuCa with the inputs below.")),
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
                io.Int.Input("first_full_steps", default=PRESET_FIRST_STEPS, min=PRESET_FIRST_STEPS, max=1000,
                             step=1, optional=True, tooltip=(
                                 "The first steps are always computed (they set the composition). -1: the "
                                 "preset's (3 on quality and balanced, 1 on fast and turbo; DuCa's presets: "
                                 "measured per family).")),
                *step_window_inputs(),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="compute", optional=True,
                               tooltip="compute: keep caches on the GPU (fastest). cpu: offload them to RAM "
                                       "(saves VRAM, costs transfers)."),
                SCHEDULE.Input("schedule", optional=True, tooltip=(
                    "Optional: a cache schedule (FORA, EB-Cache, Block Caching, L2C) that decides per block and "
                    "step instead of the preset's cycle.")),
                io.Combo.Input("estimator", options=list(ESTIMATOR_CHOICES), default=AUTO, optional=True, tooltip=(
                    "What a skipped step hands on. auto: what was measured best for the model's family (U-Nets: "
                    "taylor2, the others: reuse; the budget presets: taylor1). reuse: the last computed value. "
                    "taylor1 / taylor2: a forecast through the last 2 / 3 computed steps. spectrum: a fit over "
                    "all computed steps.")),
                io.Float.Input("budget", default=0.0, min=0.0, max=1.0, step=0.01, optional=True, tooltip=(
                    "quality / balanced / fast / turbo only: the fraction of the steps the model runs on, "
                    "instead of the preset's. 0: the preset's. 1: every step (the uncached output).")),
                io.Combo.Input("placement", options=list(PLACEMENTS), default="ends", optional=True, tooltip=(
                    "quality / balanced / fast / turbo only: where the computed steps go after the first "
                    "ones. ends: denser near the start and the end of sampling, where the model's output "
                    "changes fastest (measured best). even: evenly spread. adaptive: decided as the run "
                    "goes, where the forecast's own measured error grows fastest.")),
            ],
            outputs=[model_output("The model with caching attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, preset=None, token_selector=None, cache_device=None, estimator=None,
                        placement=None) -> bool | str:
        return check_options(cls, preset=preset, token_selector=token_selector, cache_device=cache_device,
                             estimator=estimator, placement=placement)

    @classmethod
    def execute(cls, model, preset="balanced", interval=None, refresh_ratio=None, token_selector=None,
                first_full_steps=None, start_percent=0.0, end_percent=1.0, cache_device="compute",
                schedule=None, estimator=AUTO, budget=0.0, placement="ends") -> io.NodeOutput:
        if first_full_steps == PRESET_FIRST_STEPS:
            first_full_steps = None
        if preset not in PRESET_CHOICES:
            raise ValueError(f"preset must be one of {list(PRESET_CHOICES)}, got {preset!r}")
        if token_selector is not None:  # checked on every preset, though only DuCa's use it
            check_choice("token_selector", token_selector, SELECTORS)
        if preset in FORECAST_PRESETS:
            config = forecast_config(preset, budget, placement, first_full_steps, start_percent, end_percent,
                                     cache_device, estimator)
        else:
            config = build_config(preset.removeprefix(DUCA), interval, refresh_ratio, token_selector,
                                  first_full_steps, start_percent, end_percent, cache_device, estimator)
        if schedule is not None:
            config = ScheduleConfig(schedule, cache_device=cache_device)
        return io.NodeOutput(apply_method(model, config, listeners=[node_reporter(cls.hidden.unique_id)]))
