"""The flagship node, "Accelerate (DuCa)": a model and a preset. What changes a preset comes in on
its optional options input (Accelerate Options); DuCa's own cycle has its node (DuCa Cycle)."""
from __future__ import annotations

import inspect
from dataclasses import fields

from comfy_api.latest import io

from ..cache_core.store import CACHE_DEVICES
from ..cache_core.tokens import SELECTORS
from ..glue.patch import apply_method
from ..glue.ui import node_reporter
from ..methods import PRESETS
from ..methods.common import AUTO, ESTIMATOR_CHOICES
from ..methods.forecast import PLACEMENTS
from ..methods.settings import FLAGSHIP_PRESETS, PRESETS_OWN, Options, custom_config, preset_config
from .base import CATEGORY, check_options, model_output, shows_stats

OPTIONS = io.Custom("DUCA_ACCELERATE_OPTIONS")


def search_aliases(*aliases) -> dict:
    """Words the node search finds it by, on hosts whose schema has them."""
    return {"search_aliases": list(aliases)} if "search_aliases" in {f.name for f in fields(io.Schema)} else {}


def advanced() -> dict:
    """Folded under the node's advanced inputs, on hosts whose schema has them (newer V3)."""
    return {"advanced": True} if "advanced" in inspect.signature(io.Combo.Input.__init__).parameters else {}


def options_input() -> io.Input:
    return OPTIONS.Input("options", optional=True, tooltip=(
        "Optional: Accelerate Options (the budget, where the computed steps go, the first full steps, the "
        "step window, the cache device, what a skipped step hands on). Left out: the preset's."))


def attach(cls, model, config) -> io.NodeOutput:
    return io.NodeOutput(apply_method(model, config, listeners=[node_reporter(cls.hidden.unique_id)]))


class Accelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaAccelerateV2",
            display_name="Accelerate (DuCa)",
            category=CATEGORY,
            **search_aliases("cache", "speed up", "faster sampling", "forecast", "teacache"),
            description=("Samples faster by computing the model on a fraction of the steps and forecasting it "
                         "on the others, on every model family; no training, weights unchanged. Connect it "
                         "between your model loader and your sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (from your loader)."),
                io.Combo.Input("preset", options=list(FLAGSHIP_PRESETS), default="balanced", tooltip=(
                    "quality / balanced / fast / turbo: the model runs on 45 / 35 / 27 / 20% of the steps "
                    "(the first steps always; under 14 steps or with lcm every step) and the others are "
                    "forecast. duca quality / balanced / fast: DuCa's cycles of full, conservative (a "
                    "fraction of tokens recomputed) and aggressive (the block stack reused) steps.")),
                options_input(),
            ],
            outputs=[model_output("The model with caching attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, preset=None) -> bool | str:
        return check_options(cls, preset=preset)

    @classmethod
    def execute(cls, model, preset="balanced", options=None) -> io.NodeOutput:
        return attach(cls, model, preset_config(preset, options or Options()))


class AccelerateOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaAccelerateOptions",
            display_name="Accelerate Options (DuCa)",
            category=CATEGORY,
            description="Changes what an Accelerate (DuCa) or DuCa Cycle node's preset sets. 0: the preset's.",
            inputs=[
                io.Float.Input("budget", default=PRESETS_OWN, min=0.0, max=1.0, step=0.01, tooltip=(
                    "quality / balanced / fast / turbo only: the fraction of the steps the model runs on. "
                    "0: the preset's. 1: every step (the uncached output).")),
                io.Int.Input("first_full_steps", default=PRESETS_OWN, min=0, max=1000, step=1, tooltip=(
                    "The first steps are always computed (they set the composition). 0: the preset's (3 on "
                    "quality and balanced, 1 on fast and turbo; DuCa's cycles: measured per family).")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling steps after which caching may begin."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling steps after which every step is computed again."),
                io.Combo.Input("placement", options=list(PLACEMENTS), default=PLACEMENTS[0], **advanced(), tooltip=(
                    "quality / balanced / fast / turbo only: where the computed steps go after the first ones. "
                    "ends: denser near the start and the end (measured best). even: evenly spread. adaptive: "
                    "decided as the run goes, where the forecast's measured error grows fastest.")),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="compute", **advanced(),
                               tooltip="compute: keep caches on the GPU (fastest). cpu: offload them to RAM "
                                       "(saves VRAM, costs transfers)."),
                io.Combo.Input("estimator", options=list(ESTIMATOR_CHOICES), default=AUTO, **advanced(), tooltip=(
                    "What a skipped step hands on. auto: what was measured best for the model's family. reuse: "
                    "the last computed value. taylor1 / taylor2: a forecast through the last 2 / 3 computed "
                    "steps. spectrum: a fit over all computed steps.")),
            ],
            outputs=[OPTIONS.Output(display_name="options", tooltip="Connect to Accelerate (DuCa)'s options.")],
        )

    @classmethod
    def validate_inputs(cls, placement=None, cache_device=None, estimator=None) -> bool | str:
        return check_options(cls, placement=placement, cache_device=cache_device, estimator=estimator)

    @classmethod
    def execute(cls, budget=PRESETS_OWN, first_full_steps=PRESETS_OWN, start_percent=0.0, end_percent=1.0,
                placement=PLACEMENTS[0], cache_device="compute", estimator=AUTO) -> io.NodeOutput:
        return io.NodeOutput(Options(budget, placement, first_full_steps, start_percent, end_percent, cache_device,
                                     estimator))


class DuCaCycle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        balanced = PRESETS["balanced"]
        return io.Schema(
            node_id="DuCaCustomCycle",
            display_name="DuCa Cycle (custom)",
            category=CATEGORY,
            description=("DuCa dual caching with your own cycle: a full step every `interval` steps, the steps "
                         "between alternating conservative (a fraction of tokens recomputed) and aggressive "
                         "(the whole block stack reused) steps."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (from your loader)."),
                io.Int.Input("interval", default=balanced.interval, min=1, max=100, step=1,
                             tooltip="A full step every N steps; the steps between alternate conservative and "
                                     "aggressive."),
                io.Float.Input("refresh_ratio", default=balanced.refresh_ratio, min=0.0, max=1.0, step=0.01,
                               tooltip="Base fraction of tokens recomputed on conservative steps (scaled per "
                                       "layer and stream)."),
                io.Combo.Input("token_selector", options=list(SELECTORS), default=balanced.token_selector,
                               **advanced(), tooltip=(
                                   "Which tokens a conservative step recomputes. value_norm: V-caching score "
                                   "(works with fused attention). value_norm_spread: also spread over the image. "
                                   "random: seeded random pick.")),
                options_input(),
            ],
            outputs=[model_output("The model with caching attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, token_selector=None) -> bool | str:
        return check_options(cls, token_selector=token_selector)

    @classmethod
    def execute(cls, model, interval=None, refresh_ratio=None, token_selector=None, options=None) -> io.NodeOutput:
        balanced = PRESETS["balanced"]
        return attach(cls, model, custom_config(
            balanced.interval if interval is None else interval,
            balanced.refresh_ratio if refresh_ratio is None else refresh_ratio,
            token_selector or balanced.token_selector, options or Options()))
