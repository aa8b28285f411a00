"""The node "Reduce Video Memory (Feature Slicer)"."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.chunking import AUTO, parse_chunks
from ..glue.memory import apply_feature_slicer
from .base import CATEGORY, model_output


class FeatureSlicer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DuCaFeatureSlicer",
            display_name="Reduce Video Memory (Feature Slicer)",
            category=CATEGORY,
            description=(
                "Lowers the peak memory of a model's activations without changing its output. Wan and LTXV blocks "
                "run slice by slice over their tokens (keys and values of all tokens first, then the rest of the "
                "block per slice); elsewhere the operators that treat tokens (or frames) independently - the MLP, "
                "cross-attention, the U-Net's ResBlocks - run slice by slice, and self-attention over slices of "
                "queries. Same result up to float rounding, about as fast. Wan, HunyuanVideo, LTXV, Mochi and SD "
                "U-Nets; other models pass through unchanged. Combine it with Accelerate (DuCa) in either order."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model whose memory to reduce (from your loader)."),
                io.String.Input("chunks", default=AUTO, tooltip=(
                    "auto: slice count chosen per block or operator from its shapes and the free memory (a slice's "
                    "temporaries stay well below the size of its input). A number: cut every sliced block (or, "
                    "outside such blocks, operator) into that many slices (more slices: less memory, slower).")),
            ],
            outputs=[model_output("The model with slicing attached; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model, chunks=AUTO) -> io.NodeOutput:
        try:
            count = parse_chunks(chunks)
        except ValueError as error:
            raise ValueError(f"Reduce Video Memory (Feature Slicer): input 'chunks': {error}") from None
        return io.NodeOutput(apply_feature_slicer(model, count))
