"""Thin node classes: inputs with tooltips and ranges, a config object, one call into the glue."""
from .accelerate import AccelerateDuCa

NODE_CLASS_MAPPINGS = {"DuCaAccelerate": AccelerateDuCa}
NODE_DISPLAY_NAME_MAPPINGS = {"DuCaAccelerate": "Accelerate (DuCa)"}
