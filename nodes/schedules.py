"""Nodes that make, show, save, load and apply cache schedules (FORA, EB-Cache, Block
Caching, Learning-to-Cache, Step Rehash), and the exposure-bias correction."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core import schedule_rules as rules
from ..cache_core.store import CACHE_DEVICES
from ..cache_core.schedule import Schedule
from ..glue import exposure, host, schedule_files, schedules
from ..glue.patch import KEY, apply_method
from ..glue.ui import node_reporter
from ..methods import ScheduleConfig
from .base import CATEGORY, SCHEDULE, check_options, model_output, shows_stats

LOG = logging.getLogger("comfyui-duca")
SUB_CATEGORY = f"{CATEGORY}/schedules"


def model_input() -> io.Model.Input:
    return io.Model.Input("model", tooltip="The model the schedule is for (its family and block count are recorded).")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=28, min=1, max=1000, step=1, tooltip=(
        "Sampling steps the schedule is made for; another step count resamples it (the run says so)."))


def first_full_input(default: int = 1) -> io.Int.Input:
    return io.Int.Input("first_full_steps", default=default, min=0, max=1000, step=1,
                        tooltip="The first steps always compute.")


def schedule_outputs() -> list:
    return [SCHEDULE.Output(display_name="schedule", tooltip=(
                "The schedule: connect it to Apply Cache Schedule, Accelerate (DuCa) or Save Cache Schedule.")),
            io.Image.Output(display_name="picture", tooltip=(
                "One column per step, one row per block: dark computed, amber attention reused, pale reused."))]


def schedule_maker(node_id: str, display_name: str, description: str, inputs: list) -> io.Schema:
    """The schema every schedule-making node shares: its inputs, the schedule and its picture."""
    return io.Schema(node_id=node_id, display_name=display_name, category=SUB_CATEGORY, description=description,
                     inputs=inputs, outputs=schedule_outputs())


def made(schedule: Schedule) -> io.NodeOutput:
    """What every schedule-making node returns: the schedule and its step x block picture."""
    LOG.info("DuCa: %s", schedule)
    return io.NodeOutput(schedule, schedule.picture()[None])


def sampling_inputs() -> list:
    """A KSampler's inputs: calibration and learning run the model the way the user samples."""
    return [
        io.Conditioning.Input("positive", tooltip="Your prompt's conditioning."),
        io.Conditioning.Input("negative", tooltip="Your negative conditioning (used when cfg > 1)."),
        io.Latent.Input("latent_image", tooltip="An empty latent of the size you sample at."),
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, step=1,
                     tooltip="The noise seed, as on your KSampler."),
        steps_input(),
        io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Classifier-free guidance scale, as on your KSampler."),
        io.Combo.Input("sampler_name", options=host.sampler_names(), default="euler",
                       tooltip="The sampler, as on your KSampler."),
        io.Combo.Input("scheduler", options=host.scheduler_names(), default="simple",
                       tooltip="The noise schedule, as on your KSampler."),
    ]


def sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler) -> schedules.Sampling:
    return schedules.Sampling(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)


def uncached(model, node: str):
    if KEY in model.model_options.get("transformer_options", {}):
        raise ValueError(f"model: {node} must see the model without caching; connect it before "
                         "Accelerate (DuCa) / Apply Cache Schedule")
    return model


class SamplingNode(io.ComfyNode):
    """A schedule maker that samples with the user's settings (sampling_inputs)."""

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None) -> bool | str:
        return check_options(cls, sampler_name=sampler_name, scheduler=scheduler)


class FORASchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schedule_maker(
            "DuCaFORASchedule", "FORA Schedule",
            "FORA: every block computed every N steps and reused (under fresh gates) in between.",
            [model_input(), steps_input(),
             io.Int.Input("interval", default=3, min=1, max=100, step=1, tooltip="Compute every N steps (FORA: 3)."),
             first_full_input()])

    @classmethod
    def execute(cls, model, steps, interval, first_full_steps) -> io.NodeOutput:
        family, units = schedules.model_units(model)
        return made(rules.fora(steps, units, family, interval, first_full_steps))


class EBCacheSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schedule_maker(
            "DuCaEBCacheSchedule", "EB-Cache Schedule",
            "EB-Cache: attention and MLP cached on separate intervals (attention reused longer), or an explicit "
            "table. Pair it with Exposure Bias Correction.",
            [model_input(), steps_input(),
             io.Int.Input("attention_interval", default=3, min=1, max=100, step=1,
                          tooltip="Attention computed every N steps."),
             io.Int.Input("mlp_interval", default=2, min=1, max=100, step=1,
                          tooltip="MLP computed every N steps (at most attention_interval)."),
             first_full_input(default=3),
             io.String.Input("table", default="", multiline=False, tooltip=(
                 "Optional: one digit per step (0 compute, 1 reuse attention, 2 reuse both); overrides the "
                 "intervals."))])

    @classmethod
    def execute(cls, model, steps, attention_interval, mlp_interval, first_full_steps, table="") -> io.NodeOutput:
        family, units = schedules.model_units(model)
        return made(rules.eb_cache(steps, units, family, attention_interval, mlp_interval, first_full_steps, table))


class BlockCachingCalibration(SamplingNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schedule_maker(
            "DuCaBlockCachingCalibration", "Block Caching Calibration",
            "Block Caching: samples once with your settings, measures how much each block's output changes per "
            "step, and reuses a block until its accumulated change passes the threshold.",
            [model_input(), *sampling_inputs(),
             io.Float.Input("threshold", default=0.3, min=0.0, max=10.0, step=0.01, tooltip=(
                 "Accumulated relative change (L1) at which a block is recomputed; higher reuses more.")),
             first_full_input()])

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, threshold,
                first_full_steps) -> io.NodeOutput:
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        schedule, _ = schedules.block_caching_schedule(uncached(model, "Block Caching"), sampling, threshold,
                                                       first_full_steps)
        return made(schedule)


class StepRehashSchedule(SamplingNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schedule_maker(
            "DuCaStepRehashSchedule", "Step Rehash Schedule",
            "Step Rehash: samples once, finds key steps by how similar a chosen block's output (by default the "
            "last, deepest one) is to the last key step; other steps recompute only the first blocks and reuse "
            "the deep ones.",
            [model_input(), *sampling_inputs(),
             io.Float.Input("similarity", default=0.95, min=0.0, max=1.0, step=0.005, tooltip=(
                 "A step below this cosine similarity to the last key step becomes a key step.")),
             io.Int.Input("shallow_blocks", default=1, min=0, max=1000, step=1,
                          tooltip="Blocks recomputed on non-key steps (the rest are reused)."),
             first_full_input(),
             io.Int.Input("probe_block", default=-1, min=-1000, max=1000, step=1, optional=True, tooltip=(
                 "The block whose output is compared between steps: 0 is the first, -1 the last (the paper "
                 "probes a deep layer)."))])

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, similarity,
                shallow_blocks, first_full_steps, probe_block=-1) -> io.NodeOutput:
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        schedule, _ = schedules.step_rehash_schedule(uncached(model, "Step Rehash"), sampling, similarity,
                                                     shallow_blocks, first_full_steps, probe_block)
        return made(schedule)


class LearnToCache(SamplingNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schedule_maker(
            "DuCaLearnToCache", "Learn to Cache (L2C)",
            "Learning-to-Cache: learns, on your model and prompt, which block to reuse at which step (a router "
            "trained against the uncached output), then thresholds it into a schedule with the compute you ask "
            "for. Runs on your GPU if the model is there; interrupt to stop early.",
            [model_input(), *sampling_inputs(),
             io.Int.Input("full_every", default=2, min=2, max=20, step=1, tooltip=(
                 "Every N-th step is computed; the router decides the blocks of the steps between (the paper "
                 "alternates: 2).")),
             io.Float.Input("compute", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=(
                 "Fraction of block compute the schedule keeps (the full steps included). The learned gates are "
                 "thresholded where this fraction is reached: they decide where it goes.")),
             io.Int.Input("iterations", default=600, min=1, max=100000, step=1, tooltip=(
                 "Training windows (a full step and the routed steps after it); a few hundred let the router "
                 "tell blocks apart.")),
             io.Float.Input("minutes", default=5.0, min=0.1, max=600.0, step=0.5,
                            tooltip="Time budget: training stops at whichever comes first."),
             io.Float.Input("reuse_pressure", default=0.01, min=0.0, max=10.0, step=0.01, tooltip=(
                 "The push toward reuse (the paper's L1 weight on the gates); it lowers every gate alike, the "
                 "threshold sets how much is computed."))])

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, full_every,
                compute, iterations, minutes, reuse_pressure) -> io.NodeOutput:
        from ..glue import l2c
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        learned = l2c.learn_router(uncached(model, "Learn to Cache"), sampling, full_every=full_every,
                                   iterations=iterations, seconds=minutes * 60, reuse_pressure=reuse_pressure,
                                   seed=seed, progress=host.progress_bar(iterations),
                                   interrupted=host.check_interrupted)
        adapter = schedules.model_adapter(model)
        LOG.info("DuCa: Learn to Cache trained %d windows in %.0f s", learned.iterations, learned.seconds)
        threshold = rules.threshold_for_fraction(learned.gates, learned.routed_steps, compute)
        return made(learned.schedule(adapter, threshold, {"full_every": full_every, "compute": compute}))


class ApplyCacheSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaApplySchedule", display_name="Apply Cache Schedule", category=CATEGORY,
            description="Runs the model by a cache schedule: each block computed or reused at each step as it says.",
            inputs=[
                io.Model.Input("model", tooltip="The model the schedule was made for."),
                SCHEDULE.Input("schedule", tooltip="From a schedule node or Load Cache Schedule."),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="compute", optional=True,
                               tooltip="compute: caches on the GPU. cpu: in RAM (saves VRAM, costs transfers)."),
            ],
            outputs=[model_output("The model with the schedule attached; connect it to your sampler.")],
            **shows_stats(),
        )

    @classmethod
    def validate_inputs(cls, cache_device=None) -> bool | str:
        return check_options(cls, cache_device=cache_device)

    @classmethod
    def execute(cls, model, schedule, cache_device="compute") -> io.NodeOutput:
        config = ScheduleConfig(schedule, cache_device=cache_device)
        return io.NodeOutput(apply_method(model, config, listeners=[node_reporter(cls.hidden.unique_id)]))


class SaveCacheSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaSaveSchedule", display_name="Save Cache Schedule", category=SUB_CATEGORY,
            description="Saves a schedule (safetensors or JSON, with its model family and settings) to share or reuse.",
            inputs=[
                SCHEDULE.Input("schedule", tooltip="The schedule to save, from a schedule node."),
                io.String.Input("filename_prefix", default="duca_schedule", tooltip=(
                    f"The file name's start; a number follows. Saved in the output folder's {schedule_files.FOLDER}, "
                    "where Load Cache Schedule finds it.")),
                io.Combo.Input("format", options=list(schedule_files.FORMATS), default="safetensors", tooltip=(
                    "safetensors: binary, the host's usual format. json: readable text you can edit.")),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, format=None) -> bool | str:
        return check_options(cls, format=format)

    @classmethod
    def execute(cls, schedule, filename_prefix, format="safetensors") -> io.NodeOutput:
        path = schedule_files.save(schedule, filename_prefix, format)
        saved = {"filename": path.name, "subfolder": schedule_files.FOLDER, "type": "output"}
        return io.NodeOutput(ui={"schedules": [saved], "text": [f"saved {path.name}"]})


class LoadCacheSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        # The host calls define_schema for every node list and prompt check, so a schedule saved
        # since the last call is listed.
        return io.Schema(
            node_id="DuCaLoadSchedule", display_name="Load Cache Schedule", category=SUB_CATEGORY,
            description="Loads a saved schedule (from models/duca_schedules or the output folder's duca_schedules).",
            inputs=[io.Combo.Input("schedule_name", options=schedule_files.available(), tooltip=(
                f"A schedule in models/{schedule_files.FOLDER} or the output folder's {schedule_files.FOLDER} "
                "(refresh the node definitions, key R, to list one saved since the page loaded)."))],
            outputs=schedule_outputs(),
        )

    @classmethod
    def validate_inputs(cls, schedule_name=None) -> bool | str:
        return check_options(cls, schedule_name=schedule_name)

    @classmethod
    def execute(cls, schedule_name) -> io.NodeOutput:
        return made(schedule_files.load(schedule_name))


class ExposureBiasCorrection(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaExposureBias", display_name="Exposure Bias Correction", category=CATEGORY,
            description=("EB-Cache's exposure-bias correction: divides the predicted noise (epsilon models) or "
                         "velocity (flow models) by delta. Works with any accelerator of this pack, or alone."),
            inputs=[
                io.Model.Input("model", tooltip="The model to correct (accelerated by this pack or not)."),
                io.Float.Input("delta", default=1.0, min=0.5, max=1.5, step=0.005,
                               tooltip="1.0 is off. EB-Cache's DiT setting is 0.965."),
            ],
            outputs=[model_output("The model with the correction; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model, delta) -> io.NodeOutput:
        return io.NodeOutput(exposure.apply_exposure_bias(model, delta))
