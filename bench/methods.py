"""The methods the harness compares, each a patched clone of the same base model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

# ComfyUI's EasyCache / LazyCache node defaults; reuse_threshold's node range is [0, 3].
CACHE_NODE_DEFAULTS = dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95)
THRESHOLD_MAX = 3.0
THRESHOLD_MIN = 1e-3
PRESET_NAMES = ("quality", "balanced", "fast")


@dataclass
class Method:
    name: str
    group: str                  # reference, every-k, EasyCache, LazyCache, DuCa
    model: object = None        # None: not supported on this model (see note)
    counted_by: str = "calls"   # "stats": RunStats block FLOPs; "calls": model calls computed
    settings: dict = field(default_factory=dict)
    note: str = ""

    @property
    def supported(self) -> bool:
        return self.model is not None


class CallCounter:
    """Counts model calls that really ran: a hook on the diffusion model's first child
    with weights (the input embedder), which a cache that skips the call never reaches."""

    def __init__(self, diffusion_model):
        self.module_name, module = next((n, m) for n, m in diffusion_model.named_children()
                                        if any(True for _ in m.parameters()))
        self.count = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


def duca(base, config, name, group, settings) -> Method:
    """A method through the pack's apply_method; unsupported if it hands the model back unchanged."""
    from comfyui_duca.glue.patch import apply_method
    patched = apply_method(base, config)
    if patched is base:
        return Method(name, group, None, "stats", settings,
                      f"not supported yet: apply_method passes {type(base.model.diffusion_model).__name__} through")
    return Method(name, group, patched, "stats", settings)


def copy_input(executor, x, *args, **kwargs):
    """Outermost DIFFUSION_MODEL wrapper: the model gets a copy of its input. ComfyUI 0.3.75's
    EasyCache adds its cached difference to the input in place when it skips a call, which on
    Flux also changes the sampler's x (fixed in later ComfyUI); with a copy it cannot."""
    return executor(x.clone(), *args, **kwargs)


def cache_node(base, group, reuse_threshold, name=None, copy=False) -> Method:
    """ComfyUI's EasyCache or LazyCache node applied to the base model."""
    settings = dict(CACHE_NODE_DEFAULTS, reuse_threshold=round(reuse_threshold, 4), input_copied=copy)
    name = name or group
    try:
        import comfy.patcher_extension as ext
        from comfy_extras import nodes_easycache
    except ImportError:
        return Method(name, group, None, "calls", settings, "not in this ComfyUI")
    node = nodes_easycache.EasyCacheNode if group == "EasyCache" else nodes_easycache.LazyCacheNode
    if copy:  # added before the node's wrappers, so it runs outside them
        base = base.clone()
        base.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "bench_copy_input", copy_input)
    model = node.execute(base, verbose=False, **{k: settings[k] for k in CACHE_NODE_DEFAULTS}).result[0]
    return Method(name, group, model, "calls", settings)


def presets(base) -> list:
    from comfyui_duca.methods import PRESETS
    return [duca(base, PRESETS[p], f"DuCa {p}", "DuCa", {"preset": p, **_config_settings(PRESETS[p])})
            for p in PRESET_NAMES]


def every_k(base, steps, ks=(2, 3, 4)) -> list:
    from comfyui_duca.adapters.unet import UNetAdapter
    from comfyui_duca.cache_core import every_kth_step_plan
    from comfyui_duca.methods import DuCaConfig
    if UNetAdapter.for_model(base.model.diffusion_model) is not None:  # the pack runs DeepCache there
        return [whole_step_reuse(base, every_kth_step_plan(steps, k, first_full_steps=1), f"every-{k}",
                                 {"k": k, "first_full_steps": 1, "level": "step"}) for k in ks]
    return [duca(base, DuCaConfig(plan=every_kth_step_plan(steps, k, first_full_steps=1)), f"every-{k}",
                 "every-k", {"k": k, "first_full_steps": 1}) for k in ks]


class WholeStepReuse:
    """Whole-step reuse around the model call (as the pack's step level does): on a plan's
    aggressive steps the output of the last computed call of the same conditionings is
    returned and the model is not called. State lives for one sampling run."""

    def __init__(self, plan):
        self.plan, self.sigmas, self.outputs = plan, None, {}

    def outer_sample(self, executor, *args, **kwargs):
        sigmas = kwargs["sigmas"] if "sigmas" in kwargs else args[3]
        self.sigmas, self.outputs = [float(s) for s in sigmas], {}
        try:
            return executor(*args, **kwargs)
        finally:
            self.sigmas, self.outputs = None, {}

    def diffusion_model(self, executor, *args, **kwargs):
        from comfyui_duca.cache_core import Action, step_index
        from comfyui_duca.glue.attach import find_transformer_options
        from comfyui_duca.methods.engine import conditioning_group, current_sigma
        options = find_transformer_options(args, kwargs)
        sigma = current_sigma(options)
        if self.sigmas is None or not args or sigma is None:
            return executor(*args, **kwargs)
        step = min(step_index(self.sigmas, sigma), len(self.plan) - 1)
        group = conditioning_group(args[0], options)
        if self.plan[step].action is Action.AGGRESSIVE and group in self.outputs:
            return self.outputs[group].clone()  # a copy: the sampler may work on it in place
        output = executor(*args, **kwargs)
        self.outputs[group] = output.detach().clone()
        return output


def whole_step_reuse(base, plan, name, settings) -> Method:
    import comfy.patcher_extension as ext
    reuse = WholeStepReuse(plan)
    model = base.clone()
    model.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, "bench_whole_step", reuse.outer_sample)
    model.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "bench_whole_step", reuse.diffusion_model)
    return Method(name, "every-k", model, "calls", settings)


def match_threshold(base, group, target: float, fraction_of: Callable, iterations: int, copy=False):
    """Bisection on reuse_threshold (geometric, between THRESHOLD_MIN and the node's maximum)
    towards the threshold whose fraction (what `fraction_of` measures: computed model calls, or
    time) is the smallest still >= target, so the baseline never gets less compute than ours.
    Returns (threshold, fraction, tried) where tried lists every (threshold, fraction)."""
    tried = []

    def measure(t):
        tried.append((t, fraction_of(cache_node(base, group, t, copy=copy).model)))
        return tried[-1][1]

    low, high = THRESHOLD_MIN, THRESHOLD_MAX
    if measure(high) >= target:
        return high, tried[-1][1], tried
    for _ in range(iterations):
        mid = (low * high) ** 0.5
        if measure(mid) >= target:
            low = mid
        else:
            high = mid
    # the fraction need not fall monotonically: take the best of every threshold tried
    fits = [(f, -t) for t, f in tried if f >= target] or [(1.0, -0.0)]  # threshold 0 computes all
    fraction, t = min(fits)
    return -t, fraction, tried


def build(base, steps, matched: Optional[dict], ours: list, copy_easycache=False) -> list:
    """Every method, in table order. `matched` maps EasyCache/LazyCache to a matched threshold;
    `ours` are the DuCa presets (from presets()); `copy_easycache` gives EasyCache a copy of its input."""
    methods = [Method("no cache", "reference", base)]
    methods += every_k(base, steps)
    for group in ("EasyCache", "LazyCache"):
        copy = copy_easycache and group == "EasyCache"
        label = f"{group} (input copied)" if copy else group
        methods.append(cache_node(base, group, CACHE_NODE_DEFAULTS["reuse_threshold"], f"{label} default", copy))
        if matched and group in matched:
            t = matched[group]
            methods.append(cache_node(base, group, t, f"{label} matched (t={t:.3g})", copy))
    return methods + ours


def _config_settings(config) -> dict:
    return {"interval": config.interval, "refresh_ratio": config.refresh_ratio,
            "first_full_steps": config.first_full_steps, "token_selector": config.token_selector}
