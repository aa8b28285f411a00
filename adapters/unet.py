"""ComfyUI's U-Net (UNetModel: SD1.x, SD2.x, SDXL and their fine-tunes): DeepCache, and
schedules / calibration on its transformer layers (unet_schedule.py).

The host's own `_forward` runs on every step, unchanged: ControlNet and T2I residuals,
`input_block_patch` / `output_block_patch` (FreeU, ...) and attention patches are applied
where the host applies them. On a reuse step the deep part is stood in for, for that one
call (units.standing_in), layer by layer, because `_forward` iterates over each block's
layers (forward_timestep_embed) instead of calling the block:

    input blocks 0..b        run                     (b: the branch)
    input blocks b+1..N-1    placeholders            (their skips feed only skipped blocks)
    middle block             placeholder, or the kept feature when b = N-1
    output blocks 0..N-3-b   placeholders
    output block N-2-b       the feature kept at the last full step
    output blocks N-1-b..    run, each with its fresh skip from input block N-1-j

Output block j consumes the skip of input block N-1-j, so the branch's output block
N-1-b gets the kept deep feature and the fresh skip of input block b. A skipped block's
layers return their input, except the last, which returns the placeholder (a tensor of the
block's recorded output shape; never read) or the kept feature (a copy: the host may add a
ControlNet residual or a patch to it in place). The first stand-in that runs fetches and
checks everything the reuse needs before any layer is skipped; if that fails, every
stand-in of the call runs its layer's own forward (the call is computed as usual) and
caching is switched off for the rest of the run.

On a full step forward hooks on each block's last layer record the block output shapes and
keep the deep feature; once per call key, hooks count each block's (and each transformer
unit's) multiply-adds.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .base import BlockStack
from .units import own_forward, standing_in
from .unet_schedule import scheduled_call, transformer_units
from ..cache_core.deepcache import DeepCacheConfig
from ..cache_core.plan import Action

FEATURE = "deepcache_feature"   # store: the deep feature entering the branch's output block
SHAPES = "deepcache_shapes"     # store: {block: (shape, dtype, device)} of each block's output
FLOPS = "deepcache_flops"       # store: {block: FLOPs of one call} for this call key
UNIT_FLOPS = "unit_flops"       # store: [FLOPs of one call per transformer unit] for this call key
BLOCK_KINDS = ("input", "middle", "output")


def deepcache_settings(config) -> DeepCacheConfig:
    """DeepCache settings for a run: the node's own, or the flagship's DuCa settings mapped.

    DuCa's interval N becomes DeepCache interval N - 1 at branch 0 (presets quality / balanced
    / fast: 3 / 4 / 6 -> 2 / 3 / 5). A U-Net has no token-wise conservative step, so DuCa's
    cycle F C A (C ...) would compute its C steps in full; N - 1 keeps the presets' order, and
    start / end / first_full_steps / cache_device / a fixed plan carry over as they are.
    """
    if isinstance(config, DeepCacheConfig):
        return config
    return DeepCacheConfig(interval=max(1, config.interval - 1), branch=0, first_full_steps=config.first_full_steps,
                           start=config.start, end=config.end, cache_device=config.cache_device, plan=config.plan)


class UNetAdapter(BlockStack):
    family = "unet"
    level = "deepcache"
    tokenwise = False
    step_level = False

    def __init__(self, diffusion_model):
        self.keys = []  # no `patches_replace["dit"]` blocks: the work happens in around_call
        self.inputs = list(diffusion_model.input_blocks)
        self.middle = diffusion_model.middle_block
        self.outputs = list(diffusion_model.output_blocks)
        self.family = _family(diffusion_model)
        self.units = transformer_units(self.blocks())

    @classmethod
    def for_model(cls, diffusion_model):
        if type(diffusion_model).__name__ != "UNetModel":
            return None
        if not all(hasattr(diffusion_model, a) for a in ("input_blocks", "middle_block", "output_blocks")):
            return None
        inputs, outputs = diffusion_model.input_blocks, diffusion_model.output_blocks
        if len(inputs) < 2 or len(inputs) != len(outputs) or any(len(b) == 0 for b in list(inputs) + list(outputs)):
            return None  # a layout whose skips don't pair one to one: not the U-Net this knows
        return cls(diffusion_model)

    @staticmethod
    def grid(x) -> tuple:
        return ()

    # --- settings ------------------------------------------------------------
    @property
    def max_branch(self) -> int:
        """The deepest valid branch: with branch N-1 only the middle block is reused."""
        return len(self.inputs) - (1 if self.middle is not None else 2)

    def check_branch(self, branch: int, name: str = "cache_depth") -> None:
        if not 0 <= branch <= self.max_branch:
            raise ValueError(f"{name} must be in [0, {self.max_branch}] for this U-Net ({len(self.inputs)} input "
                             f"blocks; 0 reuses the most), got {branch}")

    def plan_for(self, config, num_steps: int):
        settings = deepcache_settings(config)
        self.check_branch(settings.branch)
        return settings.plan_for(num_steps)

    # --- schedules ---------------------------------------------------------------
    @property
    def schedule_family(self) -> str:
        return "unet"  # SD1, SD2 and SDXL alike: the unit count tells layouts apart

    def schedule_units(self) -> list:
        return [f"transformer.{i}" for i in range(len(self.units))]

    def named_units(self) -> dict:
        return {("transformer", i): unit for i, unit in enumerate(self.units)}

    # --- which block does what -------------------------------------------------
    def blocks(self):
        """(name, block) in the order `_forward` runs them; name is (kind, index)."""
        named = [(("input", i), b) for i, b in enumerate(self.inputs)]
        if self.middle is not None:
            named.append((("middle", 0), self.middle))
        return named + [(("output", j), b) for j, b in enumerate(self.outputs)]

    def layout(self, branch: int):
        """(computed block names, skipped block names, the block whose output is the feature)."""
        n = len(self.inputs)
        feature = ("middle", 0) if branch == n - 1 else ("output", n - 2 - branch)
        computed = [("input", i) for i in range(branch + 1)] + [("output", j) for j in range(n - 1 - branch, n)]
        skipped = [name for name, _ in self.blocks() if name not in computed]
        return computed, skipped, feature

    # --- the call ----------------------------------------------------------------
    @contextlib.contextmanager
    def around_call(self, run, call):
        blocks = dict(self.blocks())
        store, key = run.store, call.key
        flops = store.get(key, FLOPS)
        counted, handles = {}, []
        if flops is None:  # the first call of this key computes: count each block's and unit's FLOPs
            handles = self._flop_hooks({**blocks, **self.named_units()}, counted)
        try:
            if run.schedule is not None or run.profile is not None:
                with scheduled_call(run, call, self.units, store.get(key, UNIT_FLOPS), flops):
                    yield
            else:
                with self._deepcache_call(run, call, blocks, flops):
                    yield
        finally:
            for handle in handles:
                handle.remove()
        if flops is None:
            flops = {name: counted.get(name, 0.0) for name in blocks}
            store.put(key, FLOPS, flops)
            store.put(key, UNIT_FLOPS, [counted.get(name, 0.0) for name in self.named_units()])
            record = run.stats.record(call.step)
            record.block_flops_full += sum(flops.values())
            record.block_flops_done += sum(flops.values())

    @contextlib.contextmanager
    def _deepcache_call(self, run, call, blocks, flops):
        """DeepCache: a reuse call stands in for the deep part; a full call keeps the deep
        feature when a later step reuses it. `flops` None: counted by the caller."""
        branch = deepcache_settings(run.config).branch
        computed, skipped, feature_block = self.layout(branch)
        store, key = run.store, call.key
        shapes = store.get(key, SHAPES) or {}
        record = run.stats.record(call.step)
        reuse = (call.action is Action.AGGRESSIVE and not run.disabled and flops is not None
                 and store.has(key, FEATURE) and all(name in shapes for name in skipped))
        if reuse:
            reuse_call = DeepCacheReuse(run, call, shapes, feature_block)
            with standing_in(reuse_call.stand_ins(blocks, skipped)):
                yield
            record.block_flops_full += sum(flops.values())
            record.block_flops_done += sum(flops.values() if reuse_call.failed else (flops[n] for n in computed))
            return

        later_reuse = any(s.action is Action.AGGRESSIVE for s in run.plan.steps[call.step + 1:])
        keep = later_reuse and not run.disabled
        seen_shapes, kept, handles = {}, {}, []
        try:
            if keep:
                handles += self._recording_hooks(blocks, feature_block, seen_shapes, kept)
            yield
        finally:
            for handle in handles:
                handle.remove()
        if keep and FEATURE in kept:
            store.put(key, SHAPES, {**shapes, **seen_shapes})
            store.put(key, FEATURE, kept[FEATURE])
        if flops is not None:
            record.block_flops_full += sum(flops.values())
            record.block_flops_done += sum(flops.values())

    @staticmethod
    def _recording_hooks(blocks, feature_block, shapes, kept) -> list:
        def hook(name):
            def record(_module, _args, out):
                shapes[name] = (tuple(out.shape), out.dtype, out.device)
                if name == feature_block:  # copied: the host adds residuals to it in place
                    kept[FEATURE] = out.detach().clone()
            return record
        return [list(block)[-1].register_forward_hook(hook(name)) for name, block in blocks.items()]

    @staticmethod
    def _flop_hooks(blocks, counted) -> list:
        """Forward hooks adding each block's FLOPs (2 x multiply-adds) of convolutions, linear
        layers and attention's two matrix products (from its q, k and v projections)."""
        handles = []

        def add(name, value):
            counted[name] = counted.get(name, 0.0) + float(value)

        for name, block in blocks.items():
            for module in block.modules():
                if isinstance(module, torch.nn.modules.conv._ConvNd):
                    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
                    handles.append(module.register_forward_hook(
                        lambda _m, _a, out, name=name, k=per_output: add(name, 2 * out.numel() * k)))
                elif isinstance(module, torch.nn.Linear):
                    handles.append(module.register_forward_hook(
                        lambda m, _a, out, name=name: add(name, 2 * out.numel() * m.in_features)))
                elif all(isinstance(getattr(module, p, None), torch.nn.Linear) for p in ("to_q", "to_k", "to_v")):
                    handles += _attention_hooks(module, lambda value, name=name: add(name, value))
        return handles


class DeepCacheReuse:
    """Stand-ins for one DeepCache reuse call (see the module docstring)."""

    def __init__(self, run, call, shapes, feature_block):
        self.run, self.call, self.shapes, self.feature_block = run, call, shapes, feature_block
        self.ready = self.failed = False
        self.feature, self.placeholders, self.skipped = None, {}, ()

    def prepare(self, x: torch.Tensor) -> None:
        """The kept feature and the placeholders, checked against the live input, before any
        layer is skipped."""
        shape, dtype, device = self.shapes[self.feature_block]
        feature = self.run.store.get(self.call.key, FEATURE, device=device)
        if feature is None or tuple(feature.shape) != tuple(shape) or feature.shape[0] != x.shape[0]:
            raise RuntimeError(f"kept deep feature {getattr(feature, 'shape', None)} does not fit this call "
                               f"(expected {tuple(shape)}, batch {x.shape[0]})")
        self.feature = feature.to(x.device)
        for name in self.skipped:
            shape, dtype, device = self.shapes[name]
            if (shape, dtype, device) not in self.placeholders:  # shared: nothing reads them
                self.placeholders[(shape, dtype, device)] = torch.empty(shape, dtype=dtype, device=device)
        self.ready = True

    def stand_ins(self, blocks, skipped) -> dict:
        def passthrough(x, *args, **kwargs):
            return x

        def placeholder(name):
            return lambda *args, **kwargs: self.placeholders[self.shapes[name]]

        def kept_feature(*args, **kwargs):
            return self.feature.clone()  # the host may add a residual to it in place

        self.skipped = tuple(skipped)
        stand_ins = {}
        for name in skipped:
            layers = list(blocks[name])
            for layer in layers[:-1]:
                stand_ins[layer] = self._guarded(layer, passthrough)
            last = kept_feature if name == self.feature_block else placeholder(name)
            stand_ins[layers[-1]] = self._guarded(layers[-1], last)
        return stand_ins

    def _guarded(self, layer, role):
        forward = own_forward(layer)

        def run(*args, **kwargs):
            if not self.ready and not self.failed:
                try:
                    self.prepare(args[0] if args else kwargs["x"])
                except Exception as error:  # never fail a user's run over a cache problem
                    if type(error).__name__ == "InterruptProcessingException":
                        raise
                    self.failed = True
                    self.run.switch_off(self.call, error, "DeepCache's deep branch")
            if self.failed:
                return forward(*args, **kwargs)
            return role(*args, **kwargs)
        return run


def _attention_hooks(attention, add) -> list:
    """q [B, N, dq], k [B, M, dq], v [B, M, dv]: q k^T and the weighted sum of v cost
    2 B N M (dq + dv) FLOPs, whatever attention kernel the host picks."""
    shapes = {}

    def keep(part):
        return lambda _m, _a, out: shapes.__setitem__(part, tuple(out.shape))

    def count(_m, _a, _out):
        if {"to_q", "to_k", "to_v"} <= set(shapes):
            q, k, v = shapes["to_q"], shapes["to_k"], shapes["to_v"]
            add(2 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1]))
        shapes.clear()
    handles = [getattr(attention, p).register_forward_hook(keep(p)) for p in ("to_q", "to_k", "to_v")]
    return handles + [attention.register_forward_hook(count)]


def _family(diffusion_model) -> str:
    """A name for the log: SDXL-like (label embedding from pooled text), SD2-like, SD1-like."""
    if getattr(diffusion_model, "num_classes", None) == "sequential":
        return "unet (SDXL-like)"
    for module in diffusion_model.modules():
        attn2 = getattr(module, "attn2", None)
        to_k = getattr(attn2, "to_k", None)
        if isinstance(to_k, torch.nn.Linear):
            return {768: "unet (SD1-like)", 1024: "unet (SD2-like)"}.get(to_k.in_features, "unet")
    return "unet"
