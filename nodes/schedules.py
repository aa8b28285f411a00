"""Nodes that make, show, save, load and apply cache schedules (FORA, EB-Cache, Block
Caching, Learning-to-Cache, Step Rehash), and the exposure-bias correction."""
from __future__ import annotations

import logging

from ..cache_core import schedule_rules as rules
from ..cache_core.store import CACHE_DEVICES
from ..methods import ScheduleConfig
from ..cache_core.schedule import Schedule
from ..glue import exposure, schedules
from ..glue.patch import KEY, apply_duca
from ..glue.ui import node_reporter
from ..glue import schedule_files
from .base import CATEGORY, HIDDEN_INPUTS, ModelPatchNode

SCHEDULE = "DUCA_SCHEDULE"
LOG = logging.getLogger("comfyui-duca")
SUB_CATEGORY = f"{CATEGORY}/schedules"

MODEL_INPUT = ("MODEL", {"tooltip": "The model the schedule is for (its family and block count are recorded)."})
STEPS_INPUT = ("INT", {"default": 28, "min": 1, "max": 1000, "tooltip":
               "Sampling steps the schedule is made for; another step count resamples it (the run says so)."})
FIRST_FULL_INPUT = ("INT", {"default": 1, "min": 0, "max": 1000, "tooltip": "The first steps always compute."})


def schedule_outputs(schedule: Schedule) -> tuple:
    """What every schedule-making node returns: the schedule and its step x block picture."""
    LOG.info("DuCa: %s", schedule)
    return schedule, schedule.picture()[None]


class ScheduleMaker:
    CATEGORY = SUB_CATEGORY
    RETURN_TYPES = (SCHEDULE, "IMAGE")
    RETURN_NAMES = ("schedule", "picture")
    OUTPUT_TOOLTIPS = ("The schedule: connect it to Apply Cache Schedule, Accelerate (DuCa) or Save Cache Schedule.",
                       "One column per step, one row per block: dark computed, amber attention reused, pale reused.")
    FUNCTION = "make"


def sampling_inputs() -> dict:
    """A KSampler's inputs: calibration and learning run the model the way the user samples."""
    import comfy.samplers
    return {
        "positive": ("CONDITIONING", {"tooltip": "Your prompt's conditioning."}),
        "negative": ("CONDITIONING", {"tooltip": "Your negative conditioning (used when cfg > 1)."}),
        "latent_image": ("LATENT", {"tooltip": "An empty latent of the size you sample at."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
        "steps": STEPS_INPUT,
        "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler"}),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "simple"}),
    }


def sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler) -> schedules.Sampling:
    return schedules.Sampling(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)


def uncached(model, node: str):
    if KEY in model.model_options.get("transformer_options", {}):
        raise ValueError(f"model: {node} must see the model without caching; connect it before "
                         "Accelerate (DuCa) / Apply Cache Schedule")
    return model


class FORASchedule(ScheduleMaker):
    DESCRIPTION = "FORA: every block computed every N steps and reused (under fresh gates) in between."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, "steps": STEPS_INPUT,
            "interval": ("INT", {"default": 3, "min": 1, "max": 100, "tooltip": "Compute every N steps (FORA: 3)."}),
            "first_full_steps": FIRST_FULL_INPUT}}

    def make(self, model, steps, interval, first_full_steps, **_unknown):
        family, units = schedules.model_units(model)
        return schedule_outputs(rules.fora(steps, units, family, interval, first_full_steps))


class EBCacheSchedule(ScheduleMaker):
    DESCRIPTION = ("EB-Cache: attention and MLP cached on separate intervals (attention reused longer), or an "
                   "explicit table. Pair it with Exposure Bias Correction.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, "steps": STEPS_INPUT,
            "attention_interval": ("INT", {"default": 3, "min": 1, "max": 100, "tooltip":
                                   "Attention computed every N steps."}),
            "mlp_interval": ("INT", {"default": 2, "min": 1, "max": 100, "tooltip":
                             "MLP computed every N steps (at most attention_interval)."}),
            "first_full_steps": ("INT", {"default": 3, "min": 0, "max": 1000}),
            "table": ("STRING", {"default": "", "multiline": False, "tooltip":
                      "Optional: one digit per step (0 compute, 1 reuse attention, 2 reuse both); overrides the "
                      "intervals."})}}

    def make(self, model, steps, attention_interval, mlp_interval, first_full_steps, table="", **_unknown):
        family, units = schedules.model_units(model)
        return schedule_outputs(rules.eb_cache(steps, units, family, attention_interval, mlp_interval,
                                               first_full_steps, table))


class BlockCachingCalibration(ScheduleMaker):
    DESCRIPTION = ("Block Caching: samples once with your settings, measures how much each block's output changes "
                   "per step, and reuses a block until its accumulated change passes the threshold.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, **sampling_inputs(),
            "threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                          "Accumulated relative change (L1) at which a block is recomputed; higher reuses more."}),
            "first_full_steps": FIRST_FULL_INPUT}}

    def make(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, threshold,
             first_full_steps, **_unknown):
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        schedule, _ = schedules.block_caching_schedule(uncached(model, "Block Caching"), sampling, threshold,
                                                       first_full_steps)
        return schedule_outputs(schedule)


class StepRehashSchedule(ScheduleMaker):
    DESCRIPTION = ("Step Rehash: samples once, finds key steps by how similar a chosen block's output (by default "
                   "the last, deepest one) is to the last key step; other steps recompute only the first blocks "
                   "and reuse the deep ones.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, **sampling_inputs(),
            "similarity": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip":
                           "A step below this cosine similarity to the last key step becomes a key step."}),
            "shallow_blocks": ("INT", {"default": 1, "min": 0, "max": 1000, "tooltip":
                               "Blocks recomputed on non-key steps (the rest are reused)."}),
            "first_full_steps": FIRST_FULL_INPUT},
            "optional": {
                "probe_block": ("INT", {"default": -1, "min": -1000, "max": 1000, "tooltip":
                                "The block whose output is compared between steps: 0 is the first, -1 the last "
                                "(the paper probes a deep layer)."})}}

    def make(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, similarity,
             shallow_blocks, first_full_steps, probe_block=-1, **_unknown):
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        schedule, _ = schedules.step_rehash_schedule(uncached(model, "Step Rehash"), sampling, similarity,
                                                     shallow_blocks, first_full_steps, probe_block)
        return schedule_outputs(schedule)


class LearnToCache(ScheduleMaker):
    DESCRIPTION = ("Learning-to-Cache: learns, on your model and prompt, which block to reuse at which step (a "
                   "router trained against the uncached output), then thresholds it into a schedule with the "
                   "compute you ask for. Runs on your GPU if the model is there; interrupt to stop early.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, **sampling_inputs(),
            "full_every": ("INT", {"default": 2, "min": 2, "max": 20, "tooltip":
                           "Every N-th step is computed; the router decides the blocks of the steps between "
                           "(the paper alternates: 2)."}),
            "compute": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                        "Fraction of block compute the schedule keeps (the full steps included). The learned "
                        "gates are thresholded where this fraction is reached: they decide where it goes."}),
            "iterations": ("INT", {"default": 600, "min": 1, "max": 100000, "tooltip":
                           "Training windows (a full step and the routed steps after it); a few hundred "
                           "let the router tell blocks apart."}),
            "minutes": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 600.0, "step": 0.5, "tooltip":
                        "Time budget: training stops at whichever comes first."}),
            "reuse_pressure": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                               "The push toward reuse (the paper's L1 weight on the gates); it lowers every "
                               "gate alike, the threshold sets how much is computed."})}}

    def make(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, full_every,
             compute, iterations, minutes, reuse_pressure, **_unknown):
        import comfy.model_management
        import comfy.utils
        from ..glue import l2c
        bar = comfy.utils.ProgressBar(iterations)
        sampling = sampling_from(positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler)
        learned = l2c.learn_router(uncached(model, "Learn to Cache"), sampling, full_every=full_every,
                                   iterations=iterations, seconds=minutes * 60, reuse_pressure=reuse_pressure,
                                   seed=seed, progress=lambda done, total: bar.update_absolute(done, total),
                                   interrupted=comfy.model_management.throw_exception_if_processing_interrupted)
        adapter = schedules.model_adapter(model)
        LOG.info("DuCa: Learn to Cache trained %d windows in %.0f s", learned.iterations, learned.seconds)
        threshold = rules.threshold_for_fraction(learned.gates, learned.routed_steps, compute)
        return schedule_outputs(learned.schedule(adapter, threshold, {"full_every": full_every, "compute": compute}))


class ApplyCacheSchedule(ModelPatchNode):
    DESCRIPTION = "Runs the model by a cache schedule: each block computed or reused at each step as it says."
    OUTPUT_TOOLTIPS = ("The model with the schedule attached; connect it to your sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "model": ("MODEL", {"tooltip": "The model the schedule was made for."}),
                    "schedule": (SCHEDULE, {"tooltip": "From a schedule node or Load Cache Schedule."})},
                "optional": {
                    "cache_device": (list(CACHE_DEVICES), {"default": "compute", "tooltip":
                                     "compute: caches on the GPU. cpu: in RAM (saves VRAM, costs transfers)."})},
                "hidden": HIDDEN_INPUTS}

    def apply(self, model, schedule, cache_device="compute", unique_id=None, **_unknown):
        config = ScheduleConfig(schedule, cache_device=cache_device)
        return (apply_duca(model, config, listeners=[node_reporter(unique_id)]),)


class SaveCacheSchedule:
    CATEGORY = SUB_CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = "Saves a schedule (safetensors or JSON, with its model family and settings) to share or reuse."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "schedule": (SCHEDULE, {}),
            "filename_prefix": ("STRING", {"default": "duca_schedule"}),
            "format": (list(schedule_files.FORMATS), {"default": "safetensors"})}}

    def save(self, schedule, filename_prefix, format="safetensors", **_unknown):
        path = schedule_files.save(schedule, filename_prefix, format)
        saved = {"filename": path.name, "subfolder": schedule_files.FOLDER, "type": "output"}
        return {"ui": {"schedules": [saved], "text": [f"saved {path.name}"]}}


class LoadCacheSchedule:
    CATEGORY = SUB_CATEGORY
    RETURN_TYPES = (SCHEDULE, "IMAGE")
    RETURN_NAMES = ("schedule", "picture")
    FUNCTION = "load"
    DESCRIPTION = "Loads a saved schedule (from models/duca_schedules or the output folder's duca_schedules)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"schedule_name": (schedule_files.available(), {})}}

    def load(self, schedule_name, **_unknown):
        return schedule_outputs(Schedule.load(schedule_files.path_of(schedule_name)))


class ExposureBiasCorrection(ModelPatchNode):
    DESCRIPTION = ("EB-Cache's exposure-bias correction: divides the predicted noise (epsilon models) or velocity "
                   "(flow models) by delta. Works with any accelerator of this pack, or alone.")
    OUTPUT_TOOLTIPS = ("The model with the correction; connect it to your sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {}),
            "delta": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 1.5, "step": 0.005, "tooltip":
                      "1.0 is off. EB-Cache's DiT setting is 0.965."})}}

    def apply(self, model, delta, **_unknown):
        return (exposure.apply_exposure_bias(model, delta),)
