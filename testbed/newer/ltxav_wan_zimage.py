"""Small models of three families newer hosts have (ComfyUI 0.33), built from the host's own classes.

The same contract as testbed.families (a `Family` per entry, float32, seeded random weights, two
blocks, conditioning of batch 1 with the keys each model_base class's `extra_conds` reads), for
LTX-2, Wan Animate 2 and Z-Image pixel space. Older hosts (0.3.75) lack these classes: nothing here
touches `comfy.supported_models` before a family's `build` is called, so the module imports
anywhere; building needs a host that has them.

    from testbed.newer.ltxav_wan_zimage import FAMILIES, flat
    family = FAMILIES[0]                              # ltx2
    model = family.build(0)
    out = models.sample(model, family.conditioning(1), family.negative(2),
                        latent=family.latent(batch=1), steps=6, cfg=3.0)
    flat(out)                                         # [B, N]: every stream of the latent

About 0.2 s (ltx2), 0.07 s (wan-animate2) and 0.1 s (z-image-pixel) per 6-step sample at cfg 3 on
two CPU threads.

| family | config class | diffusion model | extra conditioning keys | latent |
|---|---|---|---|---|
| ltx2 | LTXAV | LTXAVModel (an LTXVModel) | unprocessed_ltxav_embeds, frame_rate | NestedTensor([B,128,T,H,W], [B,8,Ta,16]) |
| wan-animate2 | WAN_Animate2 | WanAnimate2Model (a WanModel) | concat_latent_image, concat_mask, clip_vision_output, pose_video_latent, clip_vision_output_pose, cross_attn_pose | [B,16,1+F,H,W] |
| z-image-pixel | ZImagePixelSpace | NextDiTPixelSpace (a NextDiT) | - | [B,3,H,W] (RGB pixels) |

ltx2 (LTX-2, model_base.LTXAV)
- Conditioning: what LTX-2's text encoder gives, a caption_channels-wide prompt flagged
  `unprocessed_ltxav_embeds`; `extra_conds` then runs the model's own text connectors once per
  prompt (not per step) and hands the blocks c_crossattn [B, 1024, 2 x caption_channels]: the
  connectors' learnable registers pad every prompt to 1024 tokens. frame_rate is a CONDConstant
  (25 if absent); attention_mask is optional (the encoder crops padding and sends none).
  Optional, not used here: denoise/concat masks (split per stream through latent_shapes),
  keyframe_idxs, guide_attention_entries, ref_audio, generated_keyframes.
- Latent: a comfy.nested_tensor.NestedTensor (video [B,128,T,H,W], audio [B,8,Ta,16]), what
  LTXVConcatAVLatent makes (here T=2, 4x4: 32 video tokens; Ta=9, 25 audio latents a second:
  9 audio tokens of 8 x 16 = 128 values). testbed.models.sample takes it as it is:
  comfy.sample.prepare_noise draws noise per stream, KSampler packs both into [B, 1, N] and adds
  a latent_shapes cond, model_base unpacks it into the list [video, audio] for the diffusion
  model and packs its [video, audio] answer; the sample comes back as a NestedTensor.
- Blocks: transformer_blocks / BasicAVTransformerBlock.
- patches_replace["dit"]: ("double_block", i). Args: img, v_context, a_context, attention_mask,
  v_timestep, a_timestep, v_pe, a_pe, v_cross_pe, a_cross_pe, v_cross_scale_shift_timestep,
  a_cross_scale_shift_timestep, v_cross_gate_timestep, a_cross_gate_timestep,
  self_attention_mask, v_prompt_timestep, a_prompt_timestep, transformer_options.
  "img" is a tuple (video [B, Nv, Dv], audio [B, Na, Da]); v_context [B, 1024, Dv], a_context
  [B, 1024, Da]; v_timestep and the video cross timesteps are CompressedTimestep objects (not
  tensors: .data [B, 1 or frames, k x Dv], .expand() gives per-token rows); a_timestep
  [B, 1 or Na, 6 x Da]; each pe is a (tensor, split-rope flag) tuple; self_attention_mask and the
  prompt timesteps are None on this model (no guides, no cross-attention AdaLN). The original
  block returns {"img": (video, audio)}: the SAME tensors it was given, updated in place
  (addcmul_/add_), so a caller that needs the block's input afterwards must clone it first.
  transformer_options carries no block_index, total_blocks or block_type for this model; it may
  carry run_vx / run_ax / a2v_cross_attn / v2a_cross_attn switches and stg_self_attn_blocks.
- A block's units, in run order (all called through Module.__call__): attn1 (video
  self-attention; values from attn1.to_v, heads attn1.heads), attn2 (video text cross-attention),
  audio_attn1 (audio self-attention; values from audio_attn1.to_v), audio_attn2 (audio text
  cross-attention), audio_to_video_attn (queries video, keys/values audio),
  video_to_audio_attn (queries audio, keys/values video), ff (video feed-forward), audio_ff.
  Each adds a gated residual (its own scale_shift_table rows).

wan-animate2 (Wan Animate 2, model_base.WAN_Animate2)
- Built Wan 2.1 I2V-shaped (in_dim 36, img_emb); unet_config model_type "animate2".
  comfy.model_detection has no key for it: a checkpoint gets that model_type only from its
  metadata config.
- Conditioning: what WanAnimate2ToVideo puts on both conditionings, the same tensors on cond and
  uncond: concat_latent_image [1,16,1+F,H,W] (the reference image's latent, then a flat picture's)
  and concat_mask [1,1,1+F,H,W] (0 on the reference slot), which concat_cond makes into the 20
  extra input channels; clip_vision_output (-> clip_fea, 16 tokens here, 257 in the real
  encoder); the pose branch's pose_video_latent [1,16,F,H,W] (-> pose_latents, exactly one frame
  fewer than the latent or the forward raises), clip_vision_output_pose (-> clip_fea_pose) and
  cross_attn_pose (the pose prompt, -> context_pose). pose_strength and reference_strength
  become conds only when not 1.0.
- Latent: [B,16,1+F,H,W], frame 0 the reference image's slot (the node's trim_latent cuts it
  before decoding); here F=2 at 8x8: 48 tokens (16 a frame), and 32 pose tokens.
- Blocks: blocks / WanAnimate2Block.
- patches_replace["dit"]: ("double_block", i) with img [B, N, D], txt [B, clip + text tokens, D]
  (24 here), vec (e0, [B, 1, 6, D]), pe [1, N, 1, d_head/2, 2, 2], transformer_options
  (block_index, block_type "double", total_blocks, grid_sizes); returns {"img"}. The original
  block closes over this call's pose keys/values, the frame count and hw, and shared attention
  buffers: it needs every image token in frame order (each frame attends to all tokens plus its
  pose frame). The pose branch (block.forward_pose, or kv_from_input from WanAnimate2Cache) runs
  for every block on every model call before the patch is called, outside its reach.
  patches["double_block"] (after each block) get img, x (the input latent without the reference
  frame), vec, block_index, img_offset (= hw) and transformer_options.
- A block's units: self_attn (WanAnimate2SelfAttention; the block calls self_attn.forward_gen(...)
  directly, not through __call__, so forward hooks on self_attn never fire and an instance-level
  `forward` stand-in is bypassed; its q/k/v/o Linears are called normally, values from
  self_attn.v, which the pose branch also runs), cross_attn (WanI2VCrossAttention, text and CLIP
  image keys), ffn (WanFeedForward); attn1_patch and attn2_patch are honoured.

z-image-pixel (Z-Image pixel space, model_base.ZImagePixelSpace: Lumina2's extra_conds)
- Conditioning: the prompt alone (num_tokens is its length); attention_mask optional.
- Latent: RGB pixels [B,3,H,W] (latent format ZImagePixelSpace: 3 channels, no downscaling);
  16 x 16 patches (patch_size is sqrt(x_embedder inputs / 3) in detection): 64x64 -> 16 tokens.
- Blocks: layers / JointTransformerBlock (after a noise_refiner and a context_refiner of the same
  class), over [text padded to 32; image padded to 32] here (pad tokens: pad_tokens_multiple);
  then dec_net (SimpleMLPAdaLN) decodes each patch from its hidden state: cond_embed,
  input_embedder (NerfEmbedder, DCT features), res_blocks (PixelResBlock), final_layer.
  The forward returns (x + x0) / t.
- No patches_replace hook: the layers are called directly. patches["double_block"] after each
  layer get img (the image tokens), img_input, txt, pe, vec, x, block_index, transformer_options.
- A layer's units: attention (JointAttention; one fused qkv Linear, the values are the last
  third of its output: no separate value Linear), feed_forward (FeedForward: w1, w2, w3).

Surprises met while building them:
- None of these needed new params fields: testbed.models.build takes their configs unchanged.
- LTX-2's audio token holds 8 channels x 16 frequency bins: audio_in_channels must be 128, and
  its text cross-attention widths must equal the streams' widths (the prompt is projected to them).
- LTX-2's blocks update their hidden states in place and give no block index in
  transformer_options; its video timestep is an object, not a tensor.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import families
from ..families import TEXT_DIM, TEXT_TOKENS, _gen, _text

# --- LTX-2 (LTXAV): a video stream and an audio stream per block ---
LTX2_VIDEO_WIDTH = families.LTXV_WIDTH  # 6 heads of 32, as the ltxv entry
LTX2_AUDIO_WIDTH = 64                   # 2 heads of 32
LTX2_CONFIG = {
    "image_model": "ltxav", "in_channels": 128, "audio_in_channels": 128, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": LTX2_VIDEO_WIDTH // 32,
    "audio_attention_head_dim": 32, "audio_num_attention_heads": LTX2_AUDIO_WIDTH // 32,
    # the blocks' text cross-attention reads the projected prompt: its width is the stream's
    "cross_attention_dim": LTX2_VIDEO_WIDTH, "audio_cross_attention_dim": LTX2_AUDIO_WIDTH,
    "caption_channels": TEXT_DIM,
    # the text connectors (run once per prompt in extra_conds) are caption_channels wide
    "connector_attention_head_dim": 16, "connector_num_attention_heads": TEXT_DIM // 16,
    "connector_num_layers": 1, "rope_type": "split",
}
LTX2_VIDEO = (128, 2, 4, 4)   # [C, T, H, W]: 2 latent frames = 9 frames, 32 video tokens
LTX2_AUDIO = (8, 9, 16)       # [C, T, F]: 9 frames at 25 fps = 0.36 s = 9 audio latents (25 a second)


def ltx2_conditioning(seed: int = 1):
    """What LTX-2's text encoder (Gemma 3 + its projection) gives: caption_channels-wide hidden
    states, flagged for the model's own text connectors (no attention mask: it crops the padding)."""
    return _text(seed, unprocessed_ltxav_embeds=True, frame_rate=25)


def ltx2_latent(batch: int = 1):
    """The joint latent LTXVConcatAVLatent makes: NestedTensor(video [B,128,T,H,W], audio [B,8,T,16]);
    the sampler packs it into [B, 1, N] and hands the model the unpacked list (latent_shapes)."""
    import comfy.nested_tensor
    return comfy.nested_tensor.NestedTensor((torch.zeros(batch, *LTX2_VIDEO), torch.zeros(batch, *LTX2_AUDIO)))


def streams(latent) -> list:
    """The tensors of a latent (the video and audio of a NestedTensor; a plain tensor alone)."""
    return list(latent.unbind()) if getattr(latent, "is_nested", False) else [latent]


def flat(latent) -> torch.Tensor:
    """A latent as one [B, N] tensor (a NestedTensor's streams side by side)."""
    return torch.cat([t.flatten(1) for t in streams(latent)], dim=1)


# --- Wan Animate 2: Wan 2.1 I2V-shaped weights, a pose branch feeding each block K/V ---
WAN_ANIMATE2_CONFIG = {**families.WAN_SMALL, "model_type": "animate2", "in_dim": 36, "out_dim": 16}
WAN_ANIMATE2_LATENT = (16, 3, 8, 8)  # frame 0: the reference image's slot; 2 generated frames; 48 tokens
POSE_FRAMES = WAN_ANIMATE2_LATENT[1] - 1


def wan_animate2_conditioning(seed: int = 1):
    """What WanAnimate2ToVideo puts on both conditionings (the same tensors on cond and uncond):
    concat_latent_image [reference latent; grey video latent], concat_mask (0 on the reference slot),
    clip_vision_output, and the pose branch's inputs: pose_video_latent (one frame fewer than the
    latent), clip_vision_output_pose and cross_attn_pose (the pose prompt)."""
    import comfy.clip_vision
    gen = _gen(4242)
    c, t, h, w = WAN_ANIMATE2_LATENT
    clip = comfy.clip_vision.Output()
    clip.penultimate_hidden_states = torch.randn(1, families.CLIP_VISION_TOKENS, 1280, generator=gen)
    reference = torch.randn(1, c, 1, h, w, generator=gen)
    grey = torch.randn(1, c, 1, 1, 1, generator=gen).expand(1, c, t - 1, h, w)  # a flat picture's latent
    mask = torch.ones(1, 1, t, h, w)
    mask[:, :, :1] = 0.0
    pose = torch.randn(1, c, POSE_FRAMES, h, w, generator=gen)
    pose_prompt = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen)
    return _text(seed, concat_latent_image=torch.cat((reference, grey), dim=2), concat_mask=mask,
                 clip_vision_output=clip, pose_video_latent=pose, clip_vision_output_pose=clip,
                 cross_attn_pose=pose_prompt)


# --- Z-Image pixel space: Z-Image's NextDiT on RGB patches, a per-patch MLP decoder for a head ---
ZIMAGE_PIXEL_PATCH = 16
ZIMAGE_PIXEL_CONFIG = {**families.ZIMAGE_CONFIG, "image_model": "zimage_pixel", "in_channels": 3,
                       "patch_size": ZIMAGE_PIXEL_PATCH, "decoder_in_channels": 3 * ZIMAGE_PIXEL_PATCH ** 2,
                       "decoder_hidden_size": 64, "decoder_num_res_blocks": 2, "decoder_max_freqs": 8}
ZIMAGE_PIXEL_LATENT = (3, 64, 64)  # RGB pixels: 4 x 4 patches of 16, 16 image tokens


def _plain_text(seed: int = 1):
    return _text(seed)


FAMILIES = [
    # its latent is a NestedTensor: _family's plain zeros latent replaced
    dataclasses.replace(families._family("ltx2", "LTXAV", "LTXAVModel",
                                         (("transformer_blocks", "BasicAVTransformerBlock"),),
                                         LTX2_CONFIG, ltx2_conditioning, LTX2_VIDEO), latent=ltx2_latent),
    families._family("wan-animate2", "WAN_Animate2", "WanAnimate2Model", (("blocks", "WanAnimate2Block"),),
                     WAN_ANIMATE2_CONFIG, wan_animate2_conditioning, WAN_ANIMATE2_LATENT),
    families._family("z-image-pixel", "ZImagePixelSpace", "NextDiTPixelSpace",
                     (("layers", "JointTransformerBlock"),), ZIMAGE_PIXEL_CONFIG, _plain_text, ZIMAGE_PIXEL_LATENT,
                     block_hook=False),
]
