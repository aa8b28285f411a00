"""The Feature Slicer's executors: stand-ins that run a model's operators slice by slice to lower
its peak activation memory. The per-family rules they follow are in adapters/slicing.py; the
glue attaches them to ComfyUI models (docs/FEATURE_SLICER.md). Never imports ComfyUI.
"""
from .operators import MemoryAdapter, SliceSettings, SliceStats, find_memory_adapter, slicing_spec, stand_in

__all__ = ["MemoryAdapter", "SliceSettings", "SliceStats", "find_memory_adapter", "slicing_spec", "stand_in"]
