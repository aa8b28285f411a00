"""The specialist node "DeepCache (U-Net)" for SD1.x, SD2.x and SDXL models."""
from __future__ import annotations

from comfy_api.latest import io

from ..adapters.unet import UNetAdapter
from ..cache_core.deepcache import PLACEMENTS
from ..cache_core.estimators import ESTIMATORS
from ..glue.patch import apply_method
from ..methods import DeepCacheConfig
from ..methods.attach import diffusion_model_of
from ..glue.ui import node_reporter
from .base import CATEGORY, check_options, model_output, shows_stats, step_window_inputs

DEFAULT = DeepCacheConfig()


class DeepCacheUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaDeepCache",
            display_name="DeepCache (U-Net)",
            category=CATEGORY,
            description=("DeepCache for U-Net models (SD1.5, SD2, SDXL and fine-tunes): every few steps the whole "
                         "U-Net runs and its deep features are kept; in between only the shallow blocks run, on the "
                         "kept deep features. No training, weights unchanged; ControlNets and patches keep working."),
            inputs=[
                io.Model.Input("model", tooltip="A U-Net diffusion model (SD1.5, SD2, SDXL) from your loader."),
                io.Int.Input("cache_interval", default=DEFAULT.interval, min=1, max=100, step=1, tooltip=(
                    "The whole U-Net runs every N steps; the steps between reuse its deep features. 1 computes "
                    "every step; 3 is DeepCache's default.")),
                io.Int.Input("cache_depth", default=DEFAULT.branch, min=0, max=11, step=1, tooltip=(
                    "The branch: how many input blocks (after the first) still run on reuse steps. 0 reuses the "
                    "most (fastest); higher is closer to the uncached model. Valid range: 0 to the model's input "
                    "blocks minus 1 (SD1.5 and SD2: 0-11, SDXL: 0-8).")),
                io.Combo.Input("schedule", options=list(PLACEMENTS), default=DEFAULT.placement, tooltip=(
                    "uniform: a full step every cache_interval steps. quadratic: DeepCache's non-uniform "
                    "schedule, the same number of full steps gathered around the first third of the run.")),
                *step_window_inputs(),
                io.Combo.Input("estimator", options=list(ESTIMATORS), default=DEFAULT.estimator, optional=True,
                               tooltip=(
                    "What a reuse step hands on for the deep feature. reuse: the feature of the last full step "
                    "(DeepCache). taylor2: a forecast through the last 3 full steps (closer to the uncached "
                    "picture on the trained test U-Net: README); taylor1: through the last 2.")),
            ],
            outputs=[model_output("The model with DeepCache attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, schedule=None, estimator=None) -> bool | str:
        return check_options(cls, schedule=schedule, estimator=estimator)

    @classmethod
    def execute(cls, model, cache_interval=DEFAULT.interval, cache_depth=DEFAULT.branch, schedule=DEFAULT.placement,
                start_percent=0.0, end_percent=1.0, estimator=DEFAULT.estimator) -> io.NodeOutput:
        adapter = unet_adapter(model)
        config = build_config(cache_interval, cache_depth, schedule, start_percent, end_percent, estimator)
        adapter.check_branch(config.branch, "cache_depth")
        return io.NodeOutput(apply_method(model, config, listeners=[node_reporter(cls.hidden.unique_id)]))


def unet_adapter(model) -> UNetAdapter:
    diffusion_model = diffusion_model_of(model)
    adapter = UNetAdapter.for_model(diffusion_model) if diffusion_model is not None else None
    if adapter is None:
        name = type(diffusion_model).__name__ if diffusion_model is not None else type(model).__name__
        raise ValueError(f"model must be a U-Net model (SD1.5, SD2, SDXL: ComfyUI's UNetModel), got {name}; "
                         "use Accelerate (DuCa) for other families")
    return adapter


# node input -> (DeepCacheConfig field, accepted values): the error names what the user sees
INPUTS = {"cache_interval": ("interval", "an integer in [1, 100]"),
          "cache_depth": ("branch", "an integer >= 0"),
          "schedule": ("placement", f"one of {list(PLACEMENTS)}"),
          "start_percent": ("start", "a number in [0, 1]"),
          "end_percent": ("end", "a number in [0, 1]"),
          "estimator": ("estimator", f"one of {list(ESTIMATORS)}")}


def build_config(cache_interval, cache_depth, schedule, start_percent, end_percent,
                 estimator=DEFAULT.estimator) -> DeepCacheConfig:
    values = {"cache_interval": cache_interval, "cache_depth": cache_depth, "schedule": schedule,
              "start_percent": start_percent, "end_percent": end_percent, "estimator": estimator}
    for name, value in values.items():
        field, accepted = INPUTS[name]
        try:
            DeepCacheConfig(**{field: value})
        except (ValueError, TypeError):
            raise ValueError(f"{name} must be {accepted}, got {value!r}") from None
    if start_percent > end_percent:
        raise ValueError(f"start_percent ({start_percent}) must not be after end_percent ({end_percent})")
    return DeepCacheConfig(interval=cache_interval, branch=cache_depth, placement=schedule,
                           start=start_percent, end=end_percent, estimator=estimator)
