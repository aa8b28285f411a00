"""Test-only nodes for the end-to-end tests. Never part of the pack: the tests copy this
folder into the temporary ComfyUI's custom_nodes next to the pack.

Real text encoders are far too large for a CPU test run, so the tests replace each
CLIPTextEncode with this node, which emits a seeded CONDITIONING of the shape the
substituted model expects.
"""
import torch


class E2EConditioning:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            "dim": ("INT", {"default": 4096, "min": 1, "max": 8192}),
            "pooled_dim": ("INT", {"default": 0, "min": 0, "max": 8192}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31}),
        }}

    def make(self, tokens, dim, pooled_dim, seed):
        gen = torch.Generator().manual_seed(seed)
        context = torch.randn(1, tokens, dim, generator=gen)
        extra = {}
        if pooled_dim:
            extra["pooled_output"] = torch.randn(1, pooled_dim, generator=gen)
        return ([[context, extra]],)


NODE_CLASS_MAPPINGS = {"E2ETestConditioning": E2EConditioning}
