"""What the pack's nodes share: category, the schedule type, the model output, the step window
inputs, the hidden node id their run statistics are shown on and the check of their combos."""
from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "DuCa Accelerate"
SCHEDULE = io.Custom("DUCA_SCHEDULE")


def shows_stats() -> dict:
    """Schema options of a node the run's stats are shown on: its id (hidden), also in its cache
    key, as the host keys V1 nodes with a hidden UNIQUE_ID (its check misses V3's). Otherwise an
    identical node elsewhere (say, this one moved into a subgraph) would be answered with the
    cached model, and its run's stats would go to the node that made it."""
    return {"hidden": [io.Hidden.unique_id], "not_idempotent": True}


def check_options(node, **values) -> bool | str:
    """A node's `validate_inputs` for its combos: the host checks a V3 combo's value against its
    options only through it, before the prompt runs. None: a linked value, not known yet, or an
    input the prompt leaves out (the host reports a missing required one itself)."""
    options = {spec.id: spec.options for spec in node.define_schema().inputs if isinstance(spec, io.Combo.Input)}
    for name, value in values.items():
        if value is not None and value not in options[name]:
            return f"{name}: {value!r} is not one of {options[name]}"
    return True


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
