"""Host glue: the only layer that talks to ComfyUI's ModelPatcher and wrappers."""
