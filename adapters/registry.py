"""Every model family the pack knows, one entry each: how it is recognised, the level it is
cached at, its blocks, the Feature Slicer's rules for it and its measured preset settings.

A family's `name` is the one name it has everywhere: in run stats and logs, in saved
schedules (a schedule carries it and must match), in the slicer and in the README table.
A model is matched through its class hierarchy, nearest class first: the entries naming its own
class, then those naming its parent class, and so on (a subclass is its parent's family unless an
entry names it), then the entries that match by structure; within each, the first whose adapter
accepts the model wins. A model no entry takes is GENERIC: whole model calls are its unit, which
is all the whole-step forecast (the budget presets) needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from . import block_stack, slicing
from .aura import AuraFlowAdapter
from .block_stack import BlockStackAdapter, StackSpec
from .flux import FluxAdapter
from .step_level import StepAdapter
from .unet import UNET_CLASSES, UNetAdapter

TOKEN_WISE, BLOCK, STEP, DEEPCACHE = "token-wise", "block", "step", "deepcache"
LEVELS = (TOKEN_WISE, BLOCK, STEP, DEEPCACHE)

# How the measured settings were chosen: `python3 tools/host.py python bench/family_defaults.py`
# (table in bench/RESULTS.md): 20 steps, euler/simple, cfg > 1, seeds 0 and 1; intervals 2-8 x refresh
# ratios 0.05-0.3 (token-wise families) x first full steps 1-4. Per preset, the setting with the best
# latent PSNR to the uncached output at the preset's block compute budget (the papers' setting's on the
# same model, quality >= balanced + 5 points, fast <= balanced - 5), unless the papers' setting is in
# that band and within 0.5 dB of it.
RANDOM = "measured on the small model(s) of the host's class with random weights"
NEWER = "measured on the small model(s) of ComfyUI 0.33.0's class with random weights, on that host"


def measured(quality, balanced, fast) -> dict:
    """preset -> DuCa settings, from (interval, refresh ratio, first full steps) triples."""
    return {preset: {"interval": i, "refresh_ratio": r, "first_full_steps": f}
            for preset, (i, r, f) in zip(("quality", "balanced", "fast"), (quality, balanced, fast))}


@dataclass(frozen=True)
class Family:
    name: str
    level: str                  # TOKEN_WISE, BLOCK, STEP or DEEPCACHE: the finest level cached
    model_classes: tuple        # class names of the host's diffusion model; () matches by structure
    adapter: Callable           # diffusion model -> its adapter, or None where the layout is not this family's
    slicing: Optional[slicing.MemorySpec] = None  # Feature Slicer rules (None: not sliced)
    defaults: dict = field(default_factory=dict)  # preset -> measured DuCa settings ({}: the papers')
    how_chosen: str = ""        # where `defaults` come from
    estimator: str = "reuse"    # what the flagship's skipped units hand on here, by measurement
    since: str = "0.3.75"       # the first ComfyUI the pack runs it on (the README's table says it)

    def names(self, class_name: str) -> bool:
        return class_name in self.model_classes


def stack(spec: StackSpec) -> Callable:
    return lambda diffusion_model: BlockStackAdapter.for_model(diffusion_model, spec)


def step(name: str) -> Callable:
    return lambda diffusion_model: StepAdapter(name)


FAMILIES = (
    Family("hunyuan-video", TOKEN_WISE, ("HunyuanVideo",), FluxAdapter.for_model, slicing.HUNYUAN_VIDEO,
           measured((3, 0.3, 1), (3, 0.05, 1), (6, 0.2, 1)),
           f"{RANDOM} (HunyuanVideo); HunyuanVideo 1.5 beside it on ComfyUI 0.33.0 preferred 4/0.3/3, 4/0.1/3, "
           "8/0.1/3 (bench/RESULTS.md), not taken: one small random model against the other"),
    # Flux, Chroma and others built from the host's Flux block classes
    Family("flux", TOKEN_WISE, (), FluxAdapter.for_model,
           defaults=measured((3, 0.15, 3), (4, 0.1, 3), (6, 0.1, 3)),
           how_chosen="papers' (tuned on Flux-dev); the small trained Flux preferred 4/0.05/4, 5/0.05/4, "
                      "4/0.1/1 by about 2 dB (bench/RESULTS.md)"),
    Family("wan", TOKEN_WISE, ("WanModel", "VaceWanModel", "CameraWanModel", "HumoWanModel"), stack(block_stack.WAN),
           slicing.WAN,
           measured((4, 0.3, 3), (4, 0.1, 3), (6, 0.3, 1)),
           f"{RANDOM} (Wan 2.1 t2v and i2v, Wan 2.2 5B); balanced: papers', no setting won by 0.5 dB"),
    Family("ltxv", TOKEN_WISE, ("LTXVModel",), stack(block_stack.LTXV), slicing.LTXV,
           measured((4, 0.1, 4), (4, 0.1, 3), (6, 0.2, 1)), f"{RANDOM}; balanced: papers', no setting won by 0.5 dB"),
    Family("qwen-image", BLOCK, ("QwenImageTransformer2DModel",), stack(block_stack.QWEN_IMAGE),
           defaults=measured((4, 0.1, 4), (4, 0.1, 4), (3, 0.1, 1)),
           how_chosen=f"{RANDOM} (Qwen-Image and Qwen-Image-Edit); block level"),
    Family("sd3", BLOCK, ("OpenAISignatureMMDITWrapper", "MMDiT"), stack(block_stack.SD3),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)),
           how_chosen=f"{RANDOM}; block level; balanced: papers'"),
    Family("mochi", BLOCK, ("AsymmDiTJoint",), stack(block_stack.MOCHI), slicing.MOCHI,
           measured((4, 0.1, 3), (4, 0.1, 3), (3, 0.1, 1)), f"{RANDOM}; block level; balanced: papers'"),
    # AuraFlow's class is also called MMDiT; its adapter tells it from SD3's by its layers
    Family("auraflow", TOKEN_WISE, ("MMDiT",), AuraFlowAdapter.for_model,
           defaults=measured((4, 0.1, 4), (3, 0.05, 1), (4, 0.1, 1)), how_chosen=RANDOM),
    # ComfyUI 0.33's own blocks (their classes subclass older ones, whose entries would misread them):
    # LTX-2's blocks carry a (video, audio) pair; Wan Animate 2's run their attention through a
    # method of their own (forward_gen), past any stand-in for a unit; MiniMax-H3's one packed sequence
    Family("ltx2", BLOCK, ("LTXAVModel",), stack(block_stack.LTXAV),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)), how_chosen=f"{NEWER}; balanced: papers'",
           since="0.33.0"),
    Family("wan-animate2", BLOCK, ("WanAnimate2Model",), stack(block_stack.WAN_ANIMATE2),
           defaults=measured((3, 0.15, 3), (4, 0.1, 3), (8, 0.1, 1)),
           how_chosen=f"{NEWER}; balanced and quality: papers' (the best quality setting measured computed "
                      "every step: the pose branch, outside the blocks, dominates the small model)", since="0.33.0"),
    Family("minimax-h3", BLOCK, ("MiniMaxH3Model",), stack(block_stack.PACKED),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 3)),
           how_chosen=f"{NEWER}; balanced and fast: papers', no setting won by 0.5 dB", since="0.33.0"),
    # no block hook in the host's forward: whole model calls are reused
    # Forge's own Flux class (its forward has no block replacements; Forge Neo's ComfyUI-style one is "flux")
    Family("flux-forge", STEP, ("IntegratedFluxTransformer2DModel",), step("flux-forge")),
    Family("lumina2", STEP, ("NextDiT",), step("lumina2"),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)),
           how_chosen=f"{RANDOM} (Lumina 2 and Z-Image); step level; balanced: papers'"),
    Family("hidream", STEP, ("HiDreamImageTransformer2DModel",), step("hidream"),
           defaults=measured((4, 0.1, 4), (4, 0.1, 3), (6, 0.1, 3)),
           how_chosen=f"{RANDOM}; step level; balanced and fast: papers'"),
    Family("cosmos", STEP, ("GeneralDIT",), step("cosmos")),
    Family("krea2", STEP, ("SingleStreamDiT",), step("krea2"),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (3, 0.1, 1)), how_chosen=f"{NEWER}; step level; balanced: papers'",
           since="0.33.0"),
    # ERNIE-Image's forward runs no DIFFUSION_MODEL wrapper either: its calls are taken at apply_model
    Family("ernie-image", STEP, ("ErnieImageModel",), step("ernie-image"),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)), how_chosen=f"{NEWER}; step level; balanced: papers'",
           since="0.33.0"),
    # Kandinsky 5 offers block hooks, but in ComfyUI 0.33 its original block fails when called through
    # them (it is handed arguments under names the block does not take): whole calls until that is fixed
    Family("kandinsky5", STEP, ("Kandinsky5",), step("kandinsky5"),
           defaults=measured((4, 0.1, 3), (4, 0.1, 3), (6, 0.1, 1)),
           how_chosen=f"{NEWER} (Kandinsky 5 video and image); step level; balanced: papers'", since="0.33.0"),
    Family("cosmos-predict2", STEP, ("MiniTrainDIT",), step("cosmos-predict2"),
           defaults=measured((4, 0.1, 4), (4, 0.1, 3), (6, 0.1, 3)),
           how_chosen=f"{RANDOM}; step level; balanced and fast: papers'"),
    Family("omnigen2", STEP, ("OmniGen2Transformer2DModel",), step("omnigen2")),
    Family("pixart", STEP, ("PixArtMS",), step("pixart")),
    # SD1.x, SD2.x, SDXL (and SVD's video U-Net, which only the slicer takes)
    # the deep feature forecast in sigma through its last 3 computed steps: closer to the uncached
    # pictures than reusing it at the same compute, where on Flux forecasting the stack residual lost
    # (bench/RESULTS.md, "Estimators")
    Family("unet", DEEPCACHE, UNET_CLASSES, UNetAdapter.for_model, slicing.UNET, estimator="taylor2"),
)
# Any other model: its whole calls (no entry knows its blocks). Not in FAMILIES: no README row.
GENERIC = Family("generic", STEP, (), step("generic"))
BY_NAME = {family.name: family for family in (*FAMILIES, GENERIC)}


def class_names(diffusion_model) -> list:
    """The names of a model's class and its base classes, nearest first."""
    return [cls.__name__ for cls in type(diffusion_model).__mro__]


def candidates(diffusion_model) -> list:
    """The entries that may take a model, in the order they are tried (see the module doc)."""
    found = []
    for family in (f for name in class_names(diffusion_model) for f in FAMILIES if f.names(name)):
        if family not in found:  # a family naming several classes of the hierarchy: tried once
            found.append(family)
    return found + [f for f in FAMILIES if not f.model_classes]


def find_adapter(diffusion_model, generic: bool = True):
    """The adapter of a host diffusion model, its `family` and `model_class` set; GENERIC's where no
    entry takes it (None where `generic` is False, or there is no diffusion model)."""
    if diffusion_model is None:
        return None
    for family in candidates(diffusion_model) + ([GENERIC] if generic else []):
        adapter = family.adapter(diffusion_model)
        if adapter is not None:
            adapter.family, adapter.model_class = family.name, type(diffusion_model).__name__
            return adapter
    return None


def family_of(diffusion_model) -> Optional[Family]:
    """The family of a host diffusion model, without building an adapter where its class names
    alone say (the Feature Slicer asks on every model call): the one family naming its nearest named
    class; where several do, or none does, the one whose adapter takes it; else the first naming it
    (a layout only the slicer handles), else None (never GENERIC)."""
    if diffusion_model is None:
        return None
    for name in class_names(diffusion_model):
        named = [f for f in FAMILIES if f.names(name)]
        if len(named) == 1:
            return named[0]
        if named:
            break
    adapter = find_adapter(diffusion_model, generic=False)
    if adapter is not None:
        return BY_NAME[adapter.family]
    return named[0] if named else None
