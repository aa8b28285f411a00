"""Thin node classes: inputs with tooltips and ranges, a config object, one call into the glue."""
from .accelerate import AccelerateDuCa
from .deepcache import DeepCacheUNet
from .memory import FeatureSlicer

NODE_CLASS_MAPPINGS = {"DuCaAccelerate": AccelerateDuCa, "DuCaDeepCache": DeepCacheUNet}
NODE_DISPLAY_NAME_MAPPINGS = {"DuCaAccelerate": "Accelerate (DuCa)", "DuCaDeepCache": "DeepCache (U-Net)"}
NODE_CLASS_MAPPINGS["DuCaFeatureSlicer"] = FeatureSlicer
NODE_DISPLAY_NAME_MAPPINGS["DuCaFeatureSlicer"] = "Reduce Video Memory (Feature Slicer)"

from . import schedules  # noqa: E402

SCHEDULE_NODES = {
    "DuCaFORASchedule": (schedules.FORASchedule, "FORA Schedule"),
    "DuCaEBCacheSchedule": (schedules.EBCacheSchedule, "EB-Cache Schedule"),
    "DuCaBlockCachingCalibration": (schedules.BlockCachingCalibration, "Block Caching Calibration"),
    "DuCaStepRehashSchedule": (schedules.StepRehashSchedule, "Step Rehash Schedule"),
    "DuCaLearnToCache": (schedules.LearnToCache, "Learn to Cache (L2C)"),
    "DuCaApplySchedule": (schedules.ApplyCacheSchedule, "Apply Cache Schedule"),
    "DuCaSaveSchedule": (schedules.SaveCacheSchedule, "Save Cache Schedule"),
    "DuCaLoadSchedule": (schedules.LoadCacheSchedule, "Load Cache Schedule"),
    "DuCaExposureBias": (schedules.ExposureBiasCorrection, "Exposure Bias Correction"),
}
for node_id, (node_class, display_name) in SCHEDULE_NODES.items():
    NODE_CLASS_MAPPINGS[node_id] = node_class
    NODE_DISPLAY_NAME_MAPPINGS[node_id] = display_name
