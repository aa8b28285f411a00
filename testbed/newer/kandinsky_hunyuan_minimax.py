"""Small models of families only newer hosts have (ComfyUI 0.33): Kandinsky 5 (video and image),
HunyuanVideo 1.5 and MiniMax-H3, built from the host's own classes like testbed.families.

Each entry of `FAMILIES` is a testbed.families.Family: a CPU-sized model of the family's real
`comfy.supported_models` config and `comfy.model_base` class (float32, seeded random weights,
hidden 64, two blocks, 16-32 image tokens), the CONDITIONING (batch 1) and the zeros latent it
takes. Nothing of the host is touched at import time: this module imports on hosts without these
classes: ComfyUI 0.3.75 lacks Kandinsky 5 and MiniMax-H3 (their `build` fails there); it has
HunyuanVideo 1.5 with an older HunyuanVideo class (no meanflow_sum, single blocks [image; text]),
and hunyuan-video-15 builds and samples on both hosts. Every family's forward routes its blocks
through patches_replace["dit"] (block_hook True), with the caveats below.

| family | config class | diffusion model | extra conditioning keys | latent |
|---|---|---|---|---|
| kandinsky5 | Kandinsky5 | Kandinsky5 | pooled_output (required: encode_adm reads it without a default; CLIP-L pooled) | [B,16,T,H,W] |
| kandinsky5-image | Kandinsky5Image | Kandinsky5 | pooled_output (required, as above) | [B,16,H,W] |
| hunyuan-video-15 | HunyuanVideo15 | HunyuanVideo | pooled_output (required key, None: no vector_in) | [B,32,T,H,W] |
| minimax-h3 | MiniMaxH3 | MiniMaxH3Model | minimax_token_tags (what its text encoder always sends) | NestedTensor([B,24,T,H,W], [B,32,2,Ta]), B = 1 |

Block lists (`blocks`, in run order), what `patches_replace["dit"]` gets in ComfyUI 0.33 (keys of
the `args` dict a block patch gets; what `extra["original_block"](args)` returns) and each block's
units (what token-wise caching may stand in for):

- kandinsky5, kandinsky5-image: visual_transformer_blocks / TransformerDecoderBlock, hooked as
  ("double_block", i) (transformer_options block_type "double", though the block is single-stream:
  image tokens only, the text enters through cross-attention). args: x (the image tokens,
  [B, N, D]; "x", not "img"), context (text tokens after the text blocks, [B, L, D]),
  time_embed ([B, time_dim]: time + pooled text, one vector per sample), freqs (3D rope),
  transformer_options. The host reads `["x"]` from what the patch returns, but its
  original_block would return the bare tensor, NOT a dict; and in ComfyUI 0.33 calling it raises
  TypeError ("TransformerDecoderBlock.forward() got an unexpected keyword argument 'x'": it passes
  x= and context= to a forward whose parameters are visual_embed and text_embed). A patch must
  call the block itself: block(args["x"], args["context"], args["time_embed"], freqs=args["freqs"],
  transformer_options=...) -> [B, N, D], and return {"x": ...}.
  Units: self_attention_norm + self_attention (SelfAttention: to_query, to_key, to_value = the
  value Linear, query_norm, key_norm, out_layer), cross_attention_norm + cross_attention
  (CrossAttention: to_query on x, to_key / to_value on the context, out_layer), feed_forward_norm +
  feed_forward (FeedForward: in_layer, GELU, out_layer); visual_modulation (a Linear time_dim ->
  9 D: shift, scale, gate for each of the three). Residuals: x + gate * unit(norm(x) * (1 + scale)
  + shift). Before them, text_transformer_blocks / TransformerEncoderBlock (self-attention +
  feed-forward over the text, time-modulated) run with no hook; they do not see the image.
  The video model's input is 33 channels (noise, a zero image and a mask: model_base.Kandinsky5
  concat_cond); the image model takes the 16 latent channels alone.
- hunyuan-video-15: double_blocks / DoubleStreamBlock then single_blocks / SingleStreamBlock,
  the same classes and hooks as hunyuan-video: ("double_block", i) with img, txt, vec, pe,
  attention_mask, modulation_dims_img, modulation_dims_txt, transformer_options; returns
  {"img", "txt"}. ("single_block", i) with img, vec, pe, attention_mask, modulation_dims,
  transformer_options; returns {"img"}. In ComfyUI 0.33 the single blocks' "img" is
  [text; image] (TEXT FIRST, as Flux; ComfyUI 0.3.75 had [image; text]), and
  transformer_options["img_slice"] = [text length, total] says where the image is. "txt" is
  [vision tokens; byt5 tokens; text tokens] (those present), each with a cond-type embedding added.
  Units: img_attn / txt_attn (fused qkv Linear: the value vectors are its third D columns, norm,
  proj), img_mlp / txt_mlp (0, GELU, 2), img_mod / txt_mod; single: linear1 (fused qkv + MLP
  input; value columns 2D:3D), mlp_act, linear2 (attention output and MLP together), modulation.
  No cross-attention. The 1.5 layout: vec_in_dim None (no vector_in, y unused), guidance_embed
  False, patch 1x1x1, 65 input channels (32 noise + 32 image + 1 mask: model_base.HunyuanVideo15
  concat_cond), byt5_in, cond_type_embedding, vision_in (SigLIP 1152 -> hidden).
- minimax-h3: blocks / DiTBlock, hooked as ("double_block", i) (no block_type / block_index in
  transformer_options). args: img (the WHOLE packed sequence [S, D], NO batch axis:
  [text | audio rows (2 stereo channels x Ta) | video tokens], plus keyframe / reference rows
  after the text when given), t_emb ([unique timesteps, t_dim]: a table, not a per-sample
  vector), mod_segments (list of (start, stop, modulation row): per-segment adaLN rows by
  timestep and modality), rope_freqs (rotation table [1, S, 1, r, 2, 2]), transformer_options;
  returns {"img"}. Units: norm1 + attn (Attention: qkv_proj fused, no bias: value vectors are
  its third heads*head_dim columns; q_norm, k_norm, out_proj), norm2 + mlp (MLP: fc1 -> SwiGLU ->
  fc2), adaln_proj (a Linear t_dim -> 6 D x 3 modalities). No cross-attention: the text is in the
  sequence. The residual adds are done in place on the block's input (_mod_gate: addcmul_ on x),
  so a patch must not keep args["img"] expecting it unchanged after original_block.

Surprises met while building them:
- HunyuanVideo 1.5 needs HunyuanVideoParams.meanflow_sum on ComfyUI 0.33, where the host's
  detection sets it True for any checkpoint with vision_in (every HunyuanVideo 1.5):
  testbed.models.DETECTED's False (right for HunyuanVideo 1.0) would fail check_detected, so
  this module passes True itself, only on hosts whose params have the field (0.3.75's do not and
  would reject it).
- Kandinsky5Image's small model is detected by the host as Kandinsky5 (video) from its weights:
  the host tells the image model by model_dim 2560 (and visual_embed_dim 64). Built here directly
  from the Kandinsky5Image config, it is model_base.Kandinsky5Image (no concat channels).
- MiniMax-H3's rope.inv_freq buffer is made with torch.empty and no init fills it
  (testbed.models.init_weights fills only "pos_embed" buffers): it is set here to a RoPE
  frequency ladder, else it holds garbage.
- MiniMax-H3 samples only batch 1 (its forward raises otherwise); cond and uncond are never
  batched together because each carries its own PackedLayout object in minimax_payload (a
  CONDConstant, compared by equality), so cfg > 1 runs two model calls per step.
- MiniMax-H3 runs through testbed.models.sample (comfy.sample.sample, KSampler) unchanged:
  comfy.sample.prepare_noise and CFGGuider.sample take the NestedTensor latent, pack it flat for
  the sampler and unpack it for the model (latent_shapes); the result is a NestedTensor too.
  Its minimax_payload (layout, seed, audio_scale) is built by model_base.MiniMaxH3.extra_conds from
  the conditioning and the sampler's latent_shapes: a CONDITIONING need not carry it.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import families
from ..families import Family

HIDDEN = 64
TEXT_DIM = families.TEXT_DIM          # 32
TEXT_TOKENS = families.TEXT_TOKENS    # 8
POOLED_DIM = 16                       # Kandinsky 5's CLIP-L pooled vector (768 in the real model)
OFFSET = families.NEGATIVE_SEED_OFFSET


def _text(seed: int, **extra):
    return families._text(seed, **extra)


def _pooled(seed: int) -> torch.Tensor:
    return torch.randn(1, POOLED_DIM, generator=families._gen(seed + 500))


# --- Kandinsky 5: text blocks, then visual blocks with self- and cross-attention ---
# head_dim = sum(axes_dims) (32: 2 heads of 64); one text block, two visual blocks
KANDINSKY_CONFIG = {"image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16,
                    "in_text_dim": TEXT_DIM, "in_text_dim2": POOLED_DIM, "time_dim": HIDDEN,
                    "model_dim": HIDDEN, "ff_dim": 4 * HIDDEN, "patch_size": (1, 2, 2),
                    "num_text_blocks": 1, "num_visual_blocks": 2, "axes_dims": (8, 12, 12)}
# video: 2x2 patches of [noise 16; zero image 16; mask 1] (model_base.Kandinsky5.concat_cond)
KANDINSKY_VIDEO_CONFIG = {**KANDINSKY_CONFIG, "visual_embed_dim": (16 + 16 + 1) * 4,
                          "rope_scale_factor": (1.0, 2.0, 2.0)}
# image (lite image, rope scale 1 as the host's detection sets it): 2x2 patches of the latent alone
KANDINSKY_IMAGE_CONFIG = {**KANDINSKY_CONFIG, "visual_embed_dim": 16 * 4, "rope_scale_factor": (1.0, 1.0, 1.0)}


def kandinsky_conditioning(seed: int = 1):
    """Qwen2.5-VL hidden states and the CLIP-L pooled vector (model_base.Kandinsky5.encode_adm
    reads pooled_output without a default)."""
    return _text(seed, pooled_output=_pooled(seed))


# --- HunyuanVideo 1.5: the HunyuanVideo class with 1.5's fields ---
HUNYUAN15_VISION_DIM = 1152  # SigLIP; the config class's unet_config names this width
HUNYUAN15_CONFIG = {"image_model": "hunyuan_video", "in_channels": 32 + 32 + 1, "out_channels": 32,
                    "vec_in_dim": None, "context_in_dim": TEXT_DIM, "hidden_size": HIDDEN, "mlp_ratio": 4.0,
                    "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
                    "theta": 256, "patch_size": [1, 1, 1], "qkv_bias": True, "guidance_embed": False,
                    "byt5": True, "meanflow": False, "use_cond_type_embedding": True,
                    "vision_in_dim": HUNYUAN15_VISION_DIM}


def _hunyuan15_config() -> dict:
    """HUNYUAN15_CONFIG plus meanflow_sum where this host's params have it: its detection sets it
    True for every checkpoint with vision_in (testbed.models.DETECTED's False is HunyuanVideo 1.0's)."""
    import comfy.ldm.hunyuan_video.model as hv
    config = dict(HUNYUAN15_CONFIG)
    if "meanflow_sum" in {f.name for f in dataclasses.fields(hv.HunyuanVideoParams)}:
        config["meanflow_sum"] = True
    return config


def hunyuan15_build(seed: int = 0):
    return families._build("HunyuanVideo15", _hunyuan15_config(), seed)


def hunyuan15_conditioning(seed: int = 1):
    """Text-to-video: Qwen2.5-VL hidden states. HunyuanVideo's encode_adm reads pooled_output
    without a default; 1.5's text encoder sends None (no vector_in). No byt5 tokens (only quoted
    text makes them) and no vision tokens (HunyuanVideo15ImageToVideo's clip_vision_output)."""
    return _text(seed, pooled_output=None)


# --- MiniMax-H3: one stream of packed [text | audio | video] tokens ---
MINIMAX_CONFIG = {"image_model": "minimax_h3", "hidden_size": HIDDEN, "num_layers": 2,
                  "token_refiner_num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 32,
                  "ffn_hidden_size": 2 * HIDDEN, "latents_dim": 24, "audio_latents_dim": 32,
                  "patch_size": (1, 2, 2), "text_dim": TEXT_DIM, "timestep_input_dim": 64,
                  "time_embed_hidden_size": HIDDEN, "time_embed_dim": HIDDEN,
                  # rope over 3 axes x 4 frequencies: 24 of each head's 32 channels rotate
                  "rope_inv_freq_len": 4}
# The smallest latent its nodes make: 5 frames -> 2 latent frames (_empty_av_latent), 8 audio latent
# frames (5 / 24 s at 40 Hz); 8x8 (128x128 pixels) -> 16 video tokens per frame.
MINIMAX_VIDEO = (24, 2, 8, 8)
MINIMAX_AUDIO = (32, 2, 8)
ROPE_THETA = 10000.0


def minimax_build(seed: int = 0):
    model = families._build("MiniMaxH3", dict(MINIMAX_CONFIG), seed)
    inv_freq = model.model.diffusion_model.rope.inv_freq  # torch.empty in the host: fill it
    n = inv_freq.shape[0]
    with torch.no_grad():
        inv_freq.copy_(ROPE_THETA ** -(torch.arange(n, dtype=torch.float32) / n))
    return model


def minimax_conditioning(seed: int = 1):
    """Qwen3-VL hidden states with the per-token modality tags its text encoder sends (1: text; a
    prompt with images has 0 on the vision blocks)."""
    return _text(seed, minimax_token_tags=torch.ones(TEXT_TOKENS, dtype=torch.long))


def minimax_latent(batch: int = 1):
    """What EmptyMiniMaxH3LatentAV makes: a NestedTensor of the video and stereo audio latents."""
    import comfy.nested_tensor
    if batch != 1:
        raise ValueError("MiniMax-H3 samples batch 1 only")
    return comfy.nested_tensor.NestedTensor((torch.zeros(batch, *MINIMAX_VIDEO), torch.zeros(batch, *MINIMAX_AUDIO)))


def _negative(conditioning):
    return lambda seed=2: conditioning(seed + OFFSET)


FAMILIES = [
    families._family("kandinsky5", "Kandinsky5", "Kandinsky5",
                     (("visual_transformer_blocks", "TransformerDecoderBlock"),),
                     KANDINSKY_VIDEO_CONFIG, kandinsky_conditioning, (16, 2, 8, 8)),
    families._family("kandinsky5-image", "Kandinsky5Image", "Kandinsky5",
                     (("visual_transformer_blocks", "TransformerDecoderBlock"),),
                     KANDINSKY_IMAGE_CONFIG, kandinsky_conditioning, (16, 8, 8)),
    Family("hunyuan-video-15", "HunyuanVideo15", "HunyuanVideo",
           (("double_blocks", "DoubleStreamBlock"), ("single_blocks", "SingleStreamBlock")),
           build=hunyuan15_build, conditioning=hunyuan15_conditioning, negative=_negative(hunyuan15_conditioning),
           latent=lambda batch=1: torch.zeros(batch, 32, 2, 4, 4)),
    Family("minimax-h3", "MiniMaxH3", "MiniMaxH3Model", (("blocks", "DiTBlock"),),
           build=minimax_build, conditioning=minimax_conditioning, negative=_negative(minimax_conditioning),
           latent=minimax_latent),
]
