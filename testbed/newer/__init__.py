"""Small models of the families newer ComfyUI hosts have, of those hosts' own classes (one module
per group, each imports on any host and builds only where the host has the class):

    from testbed.newer import FAMILIES, missing, flat
    family = FAMILIES["ltx2"]
    if not missing(family):
        model = family.build(0)

`missing(family)` says why the running host cannot build it (empty where it can); `flat(latent)`
puts a NestedTensor latent's streams (LTX-2's video and audio) side by side for comparisons.
"""
from __future__ import annotations

from . import flux2_and_kin, kandinsky_hunyuan_minimax, ltxav_wan_zimage
from .ltxav_wan_zimage import flat

FAMILIES = {family.name: family for module in (flux2_and_kin, kandinsky_hunyuan_minimax, ltxav_wan_zimage)
            for family in module.FAMILIES}


def missing(family) -> str:
    """Why this host cannot build `family` ("" where it can)."""
    import comfy.supported_models
    import comfyui_version
    if hasattr(comfy.supported_models, family.config_class):
        return ""
    return f"ComfyUI {comfyui_version.__version__} has no {family.config_class} (newer hosts have)"


__all__ = ["FAMILIES", "flat", "missing"]
