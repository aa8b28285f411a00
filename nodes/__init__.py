"""Thin node classes: inputs with tooltips and ranges, a config object, one call into the glue."""
from .accelerate import AccelerateDuCa
from .deepcache import DeepCacheUNet

NODE_CLASS_MAPPINGS = {"DuCaAccelerate": AccelerateDuCa, "DuCaDeepCache": DeepCacheUNet}
NODE_DISPLAY_NAME_MAPPINGS = {"DuCaAccelerate": "Accelerate (DuCa)", "DuCaDeepCache": "DeepCache (U-Net)"}
