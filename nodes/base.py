"""What the pack's model-patching nodes share: category, the schedule type, the model output,
the step window inputs and the hidden node id their run statistics are shown on."""
from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "DuCa Accelerate"
SCHEDULE = io.Custom("DUCA_SCHEDULE")
HIDDEN = [io.Hidden.unique_id]  # the node the run's stats are shown on


def model_output(tooltip: str) -> io.Model.Output:
    # display_name keeps the output's name "model" (V3 would otherwise show the type, MODEL)
    return io.Model.Output(display_name="model", tooltip=tooltip)


def step_window_inputs() -> list:
    """Optional inputs: left out, caching may run over the whole sampling."""
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Fraction of the sampling steps after which caching may begin."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Fraction of the sampling steps after which every step is computed again."),
    ]
