"""Thin node classes: a schema with tooltips and ranges, a config object, one call into the glue."""
from comfy_api.latest import ComfyExtension, io

from .accelerate import Accelerate, AccelerateOptions, DuCaCycle
from .accelerate_legacy import AccelerateDuCaLegacy
from .deepcache import DeepCacheUNet
from .memory import FeatureSlicer
from .schedules import (ApplyCacheSchedule, BlockCachingCalibration, EBCacheSchedule, ExposureBiasCorrection,
                        FORASchedule, LearnToCache, LoadCacheSchedule, SaveCacheSchedule, StepRehashSchedule)

NODES = [Accelerate, AccelerateOptions, DuCaCycle, AccelerateDuCaLegacy, DeepCacheUNet, FeatureSlicer, FORASchedule, EBCacheSchedule, BlockCachingCalibration,
         StepRehashSchedule, LearnToCache, ApplyCacheSchedule, SaveCacheSchedule, LoadCacheSchedule,
         ExposureBiasCorrection]


class DuCaExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
