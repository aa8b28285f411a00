"""AuraFlow (ComfyUI's `comfy.ldm.aura.mmdit.MMDiT`): joint double layers, then single layers.

Double layers (MMDiTBlock) keep a text stream (8 register tokens, then the prompt)
and an image stream with one joint attention (`attn` returns both streams' outputs)
and one MLP per stream (`mlpC`, `mlpX`). Single layers (DiTBlock) run on
[text; image] with `attn` and `mlp`. Every residual is `x + gate * unit(...)`, so a
conservative step runs the host's own block forward with fresh modulation, norms
and gates while attention is stood in for by its output from the last full step
and the MLPs recompute the picked tokens only (the stand-ins of units.py).
"""
from __future__ import annotations

import torch

from .block_stack import BlockStackAdapter, StackSpec
from .units import copied, recording, standing_in, token_refresh, value_score
from ..cache_core.tokens import TokenLayout

SPEC = StackSpec((("double_block", "double_layers"), ("single_block", "single_layers")), outputs=("img", "txt"))
# The MLP and value projection of each stream: (stream, mlp attribute, value projection of attn)
DOUBLE_STREAMS = (("txt", "mlpC", "w1v"), ("img", "mlpX", "w2v"))
SINGLE_STREAMS = (("seq", "mlp", "w1v"),)


class AuraFlowAdapter(BlockStackAdapter):
    def __init__(self, diffusion_model):
        super().__init__(diffusion_model, SPEC)
        self.tokenwise = True
        self.level = "token-wise"
        self._stream_params = {id(b): self._params_per_stream(kind, b) for (kind, _), b in self.blocks.items()}

    @classmethod
    def for_model(cls, diffusion_model):
        if not all(hasattr(diffusion_model, a) for _, a in SPEC.block_lists):
            return None  # SD3's MMDiT shares the class name; it has joint_blocks instead
        doubles, singles = diffusion_model.double_layers, diffusion_model.single_layers
        parts_ok = (all(hasattr(b, p) for b in doubles for p in ("attn", "mlpC", "mlpX"))
                    and all(hasattr(b, p) for b in singles for p in ("attn", "mlp")))
        return cls(diffusion_model) if parts_ok and len(doubles) + len(singles) > 0 else None

    # --- the stack's state: [text; image] as the single layers see it -----------
    @staticmethod
    def stack_state(kind, io: dict) -> torch.Tensor:
        return torch.cat((io["txt"], io["img"]), dim=1) if kind == "double_block" else io["img"]

    @staticmethod
    def from_stack_state(kind, state: torch.Tensor, like: dict) -> dict:
        if kind == "single_block":
            return {"img": state}
        txt_len = like["txt"].shape[1]
        return {"txt": state[:, :txt_len], "img": state[:, txt_len:]}

    @staticmethod
    def passthrough(kind, args: dict) -> dict:
        return {"img": args["img"], "txt": args["txt"]} if kind == "double_block" else {"img": args["img"]}

    @staticmethod
    def streams(kind, args, grid, txt_len) -> dict:
        if kind == "double_block":
            txt = args["txt"].shape[1]
            return {"txt": TokenLayout(txt, (), txt), "img": TokenLayout(0, grid, args["img"].shape[1])}
        return {"seq": TokenLayout(txt_len, grid, args["img"].shape[1])}

    # --- full and conservative block calls ---------------------------------------
    def full(self, kind, block, args, original, keep_units):
        if not keep_units:
            return original(args), None
        heads = block.attn.n_heads
        if kind == "double_block":  # the double layer's attention returns (text, image)
            outputs = {"joint_attn": (block.attn, lambda out: (copied(out[0]), copied(out[1])))}
        else:
            outputs = {"seq_attn": (block.attn, copied)}
        for stream, mlp, value in (DOUBLE_STREAMS if kind == "double_block" else SINGLE_STREAMS):
            outputs[f"{stream}_mlp"] = (getattr(block, mlp), copied)
            outputs[f"{stream}_score"] = (getattr(block.attn, value), lambda out: value_score(out, heads))
        with recording(outputs) as seen:
            out = original(args)
        if "joint_attn" in seen:
            seen["txt_attn"], seen["img_attn"] = seen.pop("joint_attn")
        return out, seen

    def conservative(self, kind, block, args, cache, picks, original) -> dict:
        if kind == "double_block":
            stand_ins = {block.attn: lambda *a, **k: (cache["txt_attn"], cache["img_attn"])}
        else:
            stand_ins = {block.attn: lambda *a, **k: cache["seq_attn"]}
        for stream, mlp, _ in (DOUBLE_STREAMS if kind == "double_block" else SINGLE_STREAMS):
            stand_ins[getattr(block, mlp)] = token_refresh(getattr(block, mlp), cache, f"{stream}_mlp", picks[stream])
        with standing_in(stand_ins):
            return original(args)

    # --- compute accounting (multiply-adds x 2) ---------------------------------
    @staticmethod
    def _params_per_stream(kind, block) -> dict:
        """Parameters each token of a stream runs through: its q, k, v, o and its MLP."""
        def count(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())
        attn = block.attn
        if kind == "double_block":
            return {"txt": count(attn.w1q, attn.w1k, attn.w1v, attn.w1o), "img": count(attn.w2q, attn.w2k,
                    attn.w2v, attn.w2o), "txt_mlp": count(block.mlpC), "img_mlp": count(block.mlpX)}
        return {"seq": count(attn.w1q, attn.w1k, attn.w1v, attn.w1o), "seq_mlp": count(block.mlp)}

    def flops_full(self, kind, block, streams) -> float:
        params = self._stream_params[id(block)]
        tokens = sum(s.total for s in streams.values())
        width = block.attn.w1q.in_features
        per_stream = sum(2 * (params[name] + params[f"{name}_mlp"]) * s.total for name, s in streams.items())
        return per_stream + 4 * tokens * tokens * width

    def flops_conservative(self, kind, block, picked: dict) -> float:
        params = self._stream_params[id(block)]
        return sum(2 * params[f"{name}_mlp"] * k for name, k in picked.items())

