"""Stable Diffusion WebUI Forge: the "Accelerate (DuCa)" accordion under every txt2img and img2img
tab. Before every sampling pass (first pass, hires fix, each batch) it puts the chosen method on a
clone of the pass's U-Net patcher (the pack's `forge` glue); the settings go to the generation
parameters, so PNG Info and "Send to" restore them. API: README, "Forge".
"""
import importlib
import logging
import sys
import types
from pathlib import Path

import gradio as gr
from modules import scripts
from modules.ui_components import InputAccordion

PACKAGE = "comfyui_duca"  # the repository imported as a package (its ComfyUI __init__ is not run here)
LOG = logging.getLogger("comfyui-duca")
if LOG.getEffectiveLevel() > logging.INFO and not LOG.handlers:  # Forge's console shows the run lines
    LOG.addHandler(logging.StreamHandler())
    LOG.setLevel(logging.INFO)
COMPUTE_KEY = "DuCa compute"  # what the passes computed, written with the picture (not restored)


def _pack_forge():
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(__file__).resolve().parent.parent)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(PACKAGE + ".forge")


forge = _pack_forge()


def pass_schedule(p):
    """(steps, sigmas or None, the sampler's function) of the pass about to run, read as Forge's
    k-diffusion samplers make them; other samplers give no sigmas (the glue counts steps)."""
    from modules import processing, sd_samplers_common
    hires = getattr(p, "is_hr_pass", False)
    steps = (getattr(p, "hr_second_pass_steps", 0) or p.steps) if hires else p.steps
    sampler = getattr(p, "sampler", None)
    function = getattr(sampler, "func", None)
    try:
        if hires or isinstance(p, processing.StableDiffusionProcessingImg2Img):
            total, t_enc = sd_samplers_common.setup_img2img_steps(p, steps if hires else None)
            sigmas = sampler.get_sigmas(p, total)[total - t_enc - 1:]
        else:
            sigmas = sampler.get_sigmas(p, steps)
        sigmas = [float(s) for s in sigmas]
        return len(sigmas) - 1, sigmas, function
    except Exception as error:  # another sampler kind: no schedule to read
        LOG.info("DuCa: no sigma schedule from %s (%s); counting steps", type(sampler).__name__, error)
        return steps, None, function


class AccelerateDuCa(scripts.Script):
    sorting_priority = 15

    def __init__(self):
        super().__init__()
        self.sampling_pass = None
        self.computed = []  # compute fraction of each pass of the current batch

    def title(self):
        return "Accelerate (DuCa)"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        defaults = forge.ForgeSettings()
        with InputAccordion(False, label=self.title()) as enabled:
            with gr.Row():
                method = gr.Dropdown(label="Method", choices=list(forge.METHODS), value=defaults.method,
                                     info="auto: DeepCache on SD1.5 / SDXL, a forecast of skipped steps on others; "
                                          "fora: every block every 2 / 3 / 4 steps")
                preset = gr.Dropdown(label="Preset", choices=list(forge.PRESET_NAMES), value=defaults.preset,
                                     info="quality / balanced / fast / turbo: about 45 / 35 / 27 / 20% of the compute")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    budget = gr.Slider(label="Budget (forecast: fraction of steps computed; 0: the preset's)",
                                       minimum=0.0, maximum=1.0, step=0.01, value=defaults.budget)
                    first = gr.Slider(label="First full steps (-1: the preset's)", minimum=-1, maximum=20, step=1,
                                      value=defaults.first_full_steps)
                with gr.Row():
                    start = gr.Slider(label="Start (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01,
                                      value=defaults.start)
                    end = gr.Slider(label="End (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01,
                                    value=defaults.end)
                schedule = gr.Textbox(label="Cache schedule file (optional: a schedule saved by the ComfyUI "
                                            "pack's Save Cache Schedule; used instead of the method)",
                                      value=defaults.schedule_file)
        keys = forge.INFOTEXT_KEYS
        self.infotext_fields = [(enabled, lambda d: keys["method"] in d), (method, keys["method"]),
                                (preset, keys["preset"]), (budget, keys["budget"]),
                                (first, keys["first_full_steps"]), (start, keys["start"]), (end, keys["end"]),
                                (schedule, keys["schedule_file"])]
        self.paste_field_names = list(keys.values())
        return [enabled, method, preset, budget, first, start, end, schedule]

    def process(self, p, *args):
        self.computed = []

    def process_before_every_sampling(self, p, *args, **kwargs):
        self._finish()
        enabled, *values = args
        if not enabled:
            return
        settings = forge.ForgeSettings.from_inputs(*values)  # a bad value raises, naming the input
        steps, sigmas, function = pass_schedule(p)
        unet, self.sampling_pass = forge.accelerate(p.sd_model.forge_objects.unet, settings, steps, sigmas, function)
        p.sd_model.forge_objects.unet = unet
        if self.sampling_pass is not None:  # an unknown model ran without it: the picture says nothing
            p.extra_generation_params.update(settings.infotext())

    def postprocess_batch(self, p, *args, **kwargs):
        self._finish()
        if self.computed:  # before Forge writes the batch's infotexts
            p.extra_generation_params[COMPUTE_KEY] = ", ".join(f"{c:.1%}" for c in self.computed)
        self.computed = []

    def postprocess(self, p, processed, *args):
        self._finish()

    def _finish(self):
        if self.sampling_pass is not None:
            stats = self.sampling_pass.finish()
            if stats is not None:
                self.computed.append(stats.compute_fraction)
            self.sampling_pass = None
