"""Flux and Chroma (and others built from ComfyUI's Flux block classes).

Double blocks: separate image and text streams, joint attention, one MLP per
stream. Single blocks: one sequence [text; image], `linear1` makes q, k, v and
the MLP input, `linear2` projects [attention; MLP activation] together.

Cached units (all taken *before* their gates, so later steps apply fresh
gates): double blocks cache each stream's attention projection and MLP output;
single blocks cache the attention rows that enter `linear2` and `linear2`'s
output. A conservative step recomputes the MLP of the chosen tokens only.
Only the host's own submodules run here; the block's forward is never copied.
"""
from __future__ import annotations

import math

import torch

from .base import FamilyAdapter
from .units import copied, recording
from ..cache_core.tokens import TokenLayout, value_norm_score


def apply_mod(tensor, mult, add=None):
    """Modulation as the host's Flux layers apply it without per-frame ranges."""
    return tensor * mult if add is None else torch.addcmul(add, tensor, mult)


DOUBLE_PARTS = ("modulation", "img_norm1", "img_attn", "img_norm2", "img_mlp",
                "txt_attn", "txt_norm2", "txt_mlp")
SINGLE_PARTS = ("modulation", "linear1", "linear2", "pre_norm", "mlp_act", "hidden_size")


def gated_add(x, cached, gate):
    """x + cached * gate in one kernel (conservative steps launch one per block and stream)."""
    return torch.addcmul(x, cached, gate)


HOST_OPS_MODULE = "comfy.ops"  # where the host's own Linear layers are defined


def plain_weights(linear) -> bool:
    """True when the host runs this layer as a plain torch Linear: no casting, offloading or
    on-the-fly patches (LoRA) that its own forward would apply, and a forward of torch's or the
    host's own (another pack's layer, say a GGUF one, may dequantize or rescale its weight in
    its forward: only that forward knows what the weight means)."""
    forward = type(linear).forward
    own_forward = forward is torch.nn.Linear.forward or getattr(forward, "__module__", None) == HOST_OPS_MODULE
    return (own_forward and not getattr(linear, "comfy_cast_weights", False)
            and not getattr(linear, "weight_function", None) and not getattr(linear, "bias_function", None)
            and isinstance(linear, torch.nn.Linear)
            and type(linear.weight.data) is torch.Tensor)  # not a host's quantized tensor type


def mlp_input(linear1, x, start: int):
    """Output columns `start:` of a single block's `linear1` (the MLP input; the columns
    before it are q, k, v, which a conservative step does not use). Computed from those
    rows of the weight alone when the layer is plain; otherwise through the host layer."""
    if plain_weights(linear1) and linear1.weight.dtype == x.dtype:
        bias = linear1.bias[start:] if linear1.bias is not None else None
        return torch.nn.functional.linear(x, linear1.weight[start:], bias)
    return linear1(x)[..., start:]


def qkv_value_score(qkv: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """V-caching score from a fused qkv projection [batch, tokens, 3*dim (+ more)]."""
    b, t = qkv.shape[:2]
    v = qkv[..., 2 * dim:3 * dim].reshape(b, t, heads, dim // heads).transpose(1, 2)
    return value_norm_score(v)


class FluxAdapter(FamilyAdapter):
    level = "token-wise"
    tokenwise = True

    def __init__(self, diffusion_model):
        self.model = diffusion_model
        self.double_blocks = list(diffusion_model.double_blocks)
        self.single_blocks = list(diffusion_model.single_blocks)
        skip_double = set(getattr(diffusion_model, "skip_mmdit", ()) or ())
        skip_single = set(getattr(diffusion_model, "skip_dit", ()) or ())
        self.block_ids = [("double_block", i) for i in range(len(self.double_blocks)) if i not in skip_double]
        self.block_ids += [("single_block", i) for i in range(len(self.single_blocks)) if i not in skip_single]
        self.patch_size = getattr(diffusion_model, "patch_size", 2)
        # Flux and Chroma join [text; image] for the single blocks; HunyuanVideo's blocks built with
        # `flipped_img_txt` (ComfyUI up to 0.3.x) [image; text], newer hosts' text first as Flux
        self.text_first = not any(getattr(b, "flipped_img_txt", False) for b in self.double_blocks[:1])

    @classmethod
    def for_model(cls, diffusion_model):
        return cls(diffusion_model) if cls.matches(diffusion_model) else None

    @staticmethod
    def matches(diffusion_model) -> bool:
        doubles = getattr(diffusion_model, "double_blocks", None)
        singles = getattr(diffusion_model, "single_blocks", None)
        if doubles is None or singles is None or len(doubles) + len(singles) == 0:
            return False
        return (all(all(hasattr(b, p) for p in DOUBLE_PARTS) for b in doubles)
                and all(all(hasattr(b, p) for p in SINGLE_PARTS) for b in singles))

    # --- the block stack -------------------------------------------------
    def block(self, kind: str, index: int):
        return (self.double_blocks if kind == "double_block" else self.single_blocks)[index]

    @staticmethod
    def stream_factor(kind: str, config) -> float:
        """ToCa's Flux setting: single blocks refresh more tokens than double blocks."""
        return config.double_stream_factor if kind == "double_block" else config.single_stream_factor

    def grid(self, x: torch.Tensor) -> tuple:
        """Token grid of the model input [batch, channels, (frames,) height, width]."""
        sizes = x.shape[2:]
        patch = self.patch_size if isinstance(self.patch_size, (list, tuple)) else (self.patch_size,) * 2
        patch = (1,) * (len(sizes) - len(patch)) + tuple(patch)[-len(sizes):]
        return tuple(math.ceil(n / p) for n, p in zip(sizes, patch))

    def stack_state(self, kind: str, io: dict) -> torch.Tensor:
        """The stack's hidden state as one [batch, tokens, dim] tensor, in the order the
        single blocks see it."""
        if kind == "single_block":
            return io["img"]
        parts = (io["txt"], io["img"]) if self.text_first else (io["img"], io["txt"])
        return torch.cat(parts, dim=1)

    def from_stack_state(self, kind: str, state: torch.Tensor, like: dict) -> dict:
        if kind == "single_block":
            return {"img": state}
        if self.text_first:
            txt_len = like["txt"].shape[1]
            return {"txt": state[:, :txt_len], "img": state[:, txt_len:]}
        img_len = like["img"].shape[1]
        return {"img": state[:, :img_len], "txt": state[:, img_len:]}

    @staticmethod
    def passthrough(kind: str, args: dict) -> dict:
        return {"img": args["img"]} if kind == "single_block" else {"img": args["img"], "txt": args["txt"]}

    @staticmethod
    def can_refresh(kind: str, args: dict) -> bool:
        """Per-frame modulation (HunyuanVideo image-to-video) addresses token ranges of the
        whole sequence, which a subset of tokens does not keep: compute such blocks."""
        return all(args.get(k) is None for k in ("modulation_dims", "modulation_dims_img", "modulation_dims_txt"))

    # --- units of one block ----------------------------------------------
    def streams(self, kind: str, args: dict, grid: tuple, txt_len: int) -> dict:
        """Token streams of a block and where the image grid sits in each."""
        if kind == "double_block":
            txt_len = args["txt"].shape[1]
            return {"txt": TokenLayout(txt_len, (), txt_len),
                    "img": TokenLayout(0, grid, args["img"].shape[1])}
        prefix = txt_len if self.text_first else 0
        return {"seq": TokenLayout(prefix, grid, args["img"].shape[1])}

    def full(self, kind: str, block, args: dict, original, keep_units: bool):
        """Run the host's block; with `keep_units`, also return what conservative steps reuse."""
        if not keep_units:
            return original(args), None
        dim, heads = block.hidden_size, block.num_heads
        score = lambda qkv: qkv_value_score(qkv, heads, dim)  # noqa: E731
        if kind == "double_block":
            outputs = {"img_score": (block.img_attn.qkv, score), "txt_score": (block.txt_attn.qkv, score),
                       "img_attn": (block.img_attn.proj, copied), "txt_attn": (block.txt_attn.proj, copied),
                       "img_mlp": (block.img_mlp, copied), "txt_mlp": (block.txt_mlp, copied)}
            with recording(outputs) as seen:
                out = original(args)
            return out, seen
        attention_rows = lambda x: x[..., :dim].clone()  # noqa: E731  the attention part of linear2's input
        with recording({"seq_score": (block.linear1, score), "seq_out": (block.linear2, copied)},
                     {"seq_attn": (block.linear2, attention_rows)}) as seen:
            out = original(args)
        return out, seen

    def conservative(self, kind: str, block, args: dict, cache: dict, picks: dict, original=None) -> dict:
        """Reuse attention under fresh gates; recompute the MLP of picked tokens only.

        `picks` maps stream name to the picked tokens (TokenRows); `cache` is updated in place.
        (`original`, the host's block, is not needed: the host submodules run here.)
        """
        if kind == "double_block":
            if block.modulation:
                img_mod1, img_mod2 = block.img_mod(args["vec"])
                txt_mod1, txt_mod2 = block.txt_mod(args["vec"])
            else:
                (img_mod1, img_mod2), (txt_mod1, txt_mod2) = args["vec"]
            img = self._stream_update(args["img"], cache, "img", picks["img"], img_mod1, img_mod2,
                                      block.img_norm2, block.img_mlp)
            txt = self._stream_update(args["txt"], cache, "txt", picks["txt"], txt_mod1, txt_mod2,
                                      block.txt_norm2, block.txt_mlp)
            return {"img": img, "txt": txt}
        mod = block.modulation(args["vec"])[0] if block.modulation else args["vec"]
        x, rows = args["img"], picks["seq"]
        out_cache = cache["seq_out"]
        if rows.count > 0:
            normed = apply_mod(block.pre_norm(rows.take(x)), 1 + mod.scale, mod.shift)
            mlp = block.mlp_act(mlp_input(block.linear1, normed, 3 * block.hidden_size))
            rows.put(out_cache, block.linear2(torch.cat((rows.take(cache["seq_attn"]), mlp), dim=-1)))
        return {"img": gated_add(x, out_cache, mod.gate)}

    @staticmethod
    def _stream_update(x, cache, stream, rows, mod1, mod2, norm2, mlp):
        x = gated_add(x, cache[f"{stream}_attn"], mod1.gate)
        mlp_cache = cache[f"{stream}_mlp"]
        if rows.count > 0:
            rows.put(mlp_cache, mlp(apply_mod(norm2(rows.take(x)), 1 + mod2.scale, mod2.shift)))
        return gated_add(x, mlp_cache, mod2.gate)

    # --- compute accounting (multiply-adds x 2) -----------------------------
    @staticmethod
    def _mlp_hidden(block, kind):
        if kind == "double_block":
            return block.img_mlp[0].out_features
        return block.mlp_hidden_dim

    def flops_full(self, kind: str, block, streams: dict) -> float:
        d, h = block.hidden_size, self._mlp_hidden(block, kind)
        if kind == "double_block":
            total = sum(s.total for s in streams.values())
            per_token = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * h
            return total * per_token + 4 * total * total * d
        total = streams["seq"].total
        return total * (2 * d * (3 * d + h) + 2 * (d + h) * d) + 4 * total * total * d

    def flops_conservative(self, kind: str, block, picked: dict) -> float:
        d, h = block.hidden_size, self._mlp_hidden(block, kind)
        if kind == "double_block":
            return sum(picked.values()) * 2 * 2 * d * h
        linear1_out = h if plain_weights(block.linear1) else 3 * d + h
        return picked["seq"] * (2 * d * linear1_out + 2 * (d + h) * d)
