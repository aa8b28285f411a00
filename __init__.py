"""DuCa Accelerate: training-free feature caching for ComfyUI (DuCa, ToCa, and more)."""
from .nodes import DuCaExtension

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint() -> DuCaExtension:
    # The host's V3 loader; a NODE_CLASS_MAPPINGS here would send it down the V1 path instead.
    return DuCaExtension()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
