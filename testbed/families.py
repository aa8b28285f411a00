"""Small models of every diffusion-transformer family in the host, built from ComfyUI's own classes.

Each entry of `FAMILIES` builds a CPU-sized model of the family's real
`comfy.supported_models` config and `comfy.model_base` class (float32, seeded
random weights, two to four blocks, hidden 64 (LTXV 192, Z-Image and Wan 2.2 5B 256), 16-32 image tokens,
well under 0.1 s per 6-step sample on one CPU thread), and the conditioning and
latent it takes, so a test can sample it through ComfyUI's
KSampler path and put forward hooks on its real blocks:

    family = FAMILIES["hunyuan-video"]
    model = family.build(seed)                  # a ModelPatcher
    positive, negative = family.conditioning(1), family.negative(2)
    out = models.sample(model, positive, negative, latent=family.latent(batch=2), steps=6, cfg=4.0)
    blocks = family.block_modules(model)        # the host's block modules, in run order

Conditioning tensors have batch 1 (ComfyUI repeats them to the latent's batch)
and carry the extra keys each class's `extra_conds` reads (model_base.py):

| family | config class | diffusion model | extra conditioning keys | latent |
|---|---|---|---|---|
| ltxv | LTXV | LTXVModel | attention_mask (LTXVModel.forward requires it), frame_rate | [B,128,T,H,W] |
| qwen-image | QwenImage | QwenImageTransformer2DModel | - | [B,16,1,H,W] |
| qwen-image-edit | QwenImage | QwenImageTransformer2DModel | reference_latents (extra image tokens after the latent's) | [B,16,1,H,W] |
| mochi | GenmoMochi | AsymmDiTJoint | attention_mask (-> num_tokens; padded prompts, so cond and uncond lengths differ) | [B,12,T,H,W] |
| hunyuan-video | HunyuanVideo | HunyuanVideo | pooled_output (required), guidance | [B,16,T,H,W] |
| lumina2 | Lumina2 | NextDiT | attention_mask (-> num_tokens) | [B,16,H,W] |
| z-image | ZImage | NextDiT (z_image_modulation, pad tokens) | - | [B,16,H,W] |
| hidream | HiDream | HiDreamImageTransformer2DModel | pooled_output (required), conditioning_llama3 | [B,16,H,W] |
| auraflow | AuraFlow | MMDiT (comfy.ldm.aura) | - | [B,4,H,W] |
| cosmos-predict2 | CosmosT2IPredict2 | MiniTrainDIT | - | [B,16,T,H,W] |
| wan21-i2v | WAN21_I2V | WanModel (i2v) | clip_vision_output, concat_latent_image, concat_mask | [B,16,T,H,W] |
| wan22-5b | WAN22_T2V | WanModel (48 channels) | - | [B,48,T,H,W] |

Block lists (`blocks`: attribute of the diffusion model, class of its blocks) and
how each family calls `patches_replace["dit"]` in ComfyUI 0.3.75 (keys of the
`args` dict a block patch gets; what the original block returns):

- ltxv: transformer_blocks / BasicTransformerBlock; ("double_block", i) with
  img, txt, attention_mask, vec (per-token timestep, [B, 1 or N, 6D]), pe, transformer_options;
  returns {"img"}. ComfyUI 0.33 also passes self_attention_mask (per-guide attention
  attenuation) and prompt_timestep (a prompt modulation); both None on this model.
- qwen-image: transformer_blocks / QwenImageTransformerBlock; ("double_block", i) with
  img, txt, vec, pe, transformer_options; returns {"img", "txt"}. The text mask is
  not in args (the original block reads it from the enclosing call). Reference
  latents are appended to "img" after the latent's tokens.
- mochi: blocks / AsymmetricJointBlock; ("double_block", i) with img, txt, vec,
  rope_cos, rope_sin, num_tokens, transformer_options; returns {"img", "txt"}. The
  streams have different widths (txt is hidden_size_y); "txt" keeps the padded length
  and num_tokens crops it inside attention; the last block does not update text
  (update_y=False) and returns it unchanged. Residuals are tanh-gated and RMS-normed
  ("sandwich norm": x + tanh(gate) * rmsnorm(unit(x))). Cond and uncond with different
  num_tokens (a CONDConstant) cannot be batched: two model calls per step at cfg > 1.
- hunyuan-video: double_blocks / DoubleStreamBlock then single_blocks /
  SingleStreamBlock. ("double_block", i) with img, txt, vec, pe, attention_mask,
  modulation_dims_img, modulation_dims_txt, transformer_options; returns {"img", "txt"}.
  ("single_block", i) with img, vec, pe, attention_mask, modulation_dims,
  transformer_options; returns {"img"}. Unlike Flux, the single blocks' "img" is
  [image; text] (image tokens FIRST, then text), and no "txt" key is passed.
- auraflow: double_layers / MMDiTBlock then single_layers / DiTBlock.
  ("double_block", i) with img, txt, vec, transformer_options; returns {"txt", "img"}
  (the text stream starts with 8 register tokens). ("single_block", i) with img, vec,
  transformer_options, where "img" is [text; image] (text first, as Flux); returns {"img"}.
- wan21-i2v, wan22-5b: blocks / WanAttentionBlock; ("double_block", i) with img,
  txt, vec (e0, [B, 1 or N, 6, D]), pe, transformer_options; returns {"img"}. For
  i2v, "txt" is [clip image tokens; text tokens] and the split length is not in args.
- lumina2, z-image (layers / JointTransformerBlock, plus context_refiner and
  noise_refiner of the same class), hidream (double_stream_blocks, single_stream_blocks
  / HiDreamImageBlock), cosmos-predict2 (blocks / Block): no patches_replace hook at all
  in this host; their blocks are called directly. HiDream's single blocks each append
  one Llama layer's tokens to [image; text] and crop them off again, and its blocks are
  mixture-of-experts; Cosmos predict2's blocks keep tokens as [B, T, H, W, D].

Surprises met while building them:
- Mochi's AsymmetricJointBlock asserts hidden_size_x * mlp_ratio_x == 12288 (the
  released width), so even this small Mochi has 12288-wide visual MLPs (3.3M parameters).
- Z-Image modulation feeds a 256-wide time embedding into min(dim, 256) inputs: dim >= 256.
- LTXVModel.forward and AsymmDiTJoint.forward take attention_mask without a default, and
  HunyuanVideo/HiDream read pooled_output without one: conditioning must carry them.

Left out, and why:
- Cosmos 1 (CosmosT2V / GeneralDIT): Cosmos predict2 (MiniTrainDIT, a simpler
  config) stands for the family; GeneralDIT has no block hook either.
- Wan 2.2 14B: the same WanModel class and WAN21 configs as Wan 2.1 (two checkpoints,
  high and low noise, each a Wan 2.1-shaped model); Wan 2.1 text-to-video is
  testbed.models.wan, image-to-video is here. Wan 2.2 5B's image-to-video mode (a
  noise mask that gives every token its own timestep, vec [B, N, 6, D]) needs a
  noise_mask, which testbed.models.sample does not pass; only its text-to-video is here.
- HunyuanVideo 1.5 / HunyuanImage 2.1 / I2V variants: same HunyuanVideo class and blocks
  as hunyuan-video, with other conditioning (byt5, vision tokens, concat images).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .models import build, load_weights, text_conditioning

HIDDEN = 64
TEXT_DIM = 32
TEXT_TOKENS = 8
NEGATIVE_SEED_OFFSET = 1000  # negative(seed) draws other tensors than conditioning(seed)
TRAINED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "families"
CLASS_SEED = 100  # a trained model's class c is prompted by conditioning(CLASS_SEED + c)
EMPTY_PROMPT = -1  # the class label of the empty prompt (negative(CLASS_SEED))


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str                     # comfy.supported_models class
    model_class: str                      # class of model.model.diffusion_model
    blocks: tuple                         # ((attribute, block class name), ...) in run order
    build: Callable                       # seed -> ModelPatcher
    conditioning: Callable                # seed -> positive CONDITIONING (batch 1)
    negative: Callable                    # seed -> negative CONDITIONING (batch 1)
    latent: Callable                      # batch -> zeros latent of the right shape
    block_hook: bool = True               # the host routes its blocks through patches_replace["dit"]

    def class_conditioning(self, label: int):
        """A trained model's prompt for class `label` of testbed.models.CLASSES (EMPTY_PROMPT: none)."""
        return self.negative(CLASS_SEED) if label == EMPTY_PROMPT else self.conditioning(CLASS_SEED + label)

    def trained_weights(self) -> Path:
        """Where training/train_families.py keeps this family's weights trained on photographs."""
        return TRAINED_WEIGHTS / f"{self.name}.safetensors"

    def build_trained(self):
        """The family's small model with its trained weights (a ModelPatcher)."""
        return load_weights(self.build(0), self.trained_weights())

    def block_modules(self, model) -> list:
        """The host's block modules of a built model, in run order."""
        dm = model.model.diffusion_model
        return [block for attribute, _ in self.blocks for block in getattr(dm, attribute)]


def _build(config_class: str, unet_config: dict, seed: int):
    import comfy.supported_models
    return build(getattr(comfy.supported_models, config_class), unet_config, seed)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text(seed: int, dim: int = TEXT_DIM, tokens: int = TEXT_TOKENS, **extra):
    cond = text_conditioning(dim, tokens=tokens, seed=seed)
    cond[0][1].update(extra)
    return cond


def _family(name, config_class, model_class, blocks, unet_config, conditioning, latent_shape, block_hook=True):
    """A family whose negative is its conditioning drawn from another seed."""
    return Family(name, config_class, model_class, blocks,
                  build=lambda seed=0: _build(config_class, dict(unet_config), seed),
                  conditioning=conditioning,
                  negative=lambda seed=2: conditioning(seed + NEGATIVE_SEED_OFFSET),
                  latent=lambda batch=1: torch.zeros(batch, *latent_shape),
                  block_hook=block_hook)


# --- LTXV: 128 latent channels, patch size 1 (one token per latent voxel) ---
# Wider than the others (6 heads of 32): a flow model predicts the noise too, which has to pass
# through its blocks; narrower than a token's 128 values, a trained one could not denoise.
LTXV_WIDTH = 192
LTXV_CONFIG = {"image_model": "ltxv", "in_channels": 128, "num_layers": 2, "attention_head_dim": 32,
               "num_attention_heads": LTXV_WIDTH // 32, "cross_attention_dim": LTXV_WIDTH,
               "caption_channels": TEXT_DIM}


def ltxv_conditioning(seed: int = 1):
    # LTXVModel.forward takes attention_mask positionally without a default: the text encoder
    # always sends one (all ones when nothing is padded).
    return _text(seed, attention_mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long), frame_rate=25)


# --- Qwen-Image: 2x2 patches of a 16-channel latent with a time axis of 1 ---
QWEN_CONFIG = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2,
               "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT_DIM,
               "axes_dims_rope": (8, 12, 12)}
QWEN_LATENT = (16, 1, 8, 8)


def qwen_conditioning(seed: int = 1):
    return _text(seed)


def qwen_edit_conditioning(seed: int = 1):
    """Qwen-Image-Edit: the encoded input image rides along as a reference latent
    (what TextEncodeQwenImageEdit puts on both conditionings)."""
    reference = torch.randn(1, *QWEN_LATENT, generator=_gen(4242))  # the same picture for cond and uncond
    return _text(seed, reference_latents=[reference])


# --- Mochi (genmo AsymmDiTJoint): asymmetric streams, T5 features pooled into the modulation ---
MOCHI_CONFIG = {"image_model": "mochi_preview", "depth": 2, "patch_size": 2, "num_heads": 2,
                "hidden_size_x": HIDDEN, "hidden_size_y": 32, "mlp_ratio_y": 4.0,
                # AsymmetricJointBlock asserts Mochi's visual MLP width (hidden_size_x * mlp_ratio_x == 12288)
                "mlp_ratio_x": 12288 / HIDDEN,
                "learn_sigma": False, "in_channels": 12, "qk_norm": True, "qkv_bias": False, "out_bias": True,
                "attn_drop": 0.0, "patch_embed_bias": True, "posenc_preserve_area": True,
                "timestep_mlp_bias": True, "attend_to_padding": False, "timestep_scale": 1000.0,
                "use_t5": True, "t5_feat_dim": TEXT_DIM, "t5_token_length": TEXT_TOKENS, "rope_theta": 10000.0}


def mochi_conditioning(seed: int = 1):
    # Padded T5 prompt: the seed sets how many tokens are real (num_tokens crops the text
    # stream in attention), so cond and uncond differ in length and ComfyUI can't batch them.
    real = 5 + seed % 3
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    mask[:, :real] = 1
    cond = _text(seed, attention_mask=mask)
    cond[0][0][:, real:] = 0.0
    return cond


# --- HunyuanVideo: Flux-like double and single stream blocks, 3D patches ---
HUNYUAN_CONFIG = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 16,
                  "context_in_dim": TEXT_DIM, "hidden_size": HIDDEN, "mlp_ratio": 4.0, "num_heads": 2,
                  "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 256,
                  "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True, "byt5": False,
                  "meanflow": False, "use_cond_type_embedding": False, "vision_in_dim": None}


def hunyuan_conditioning(seed: int = 1):
    # model_base.HunyuanVideo.encode_adm reads pooled_output without a default
    pooled = torch.randn(1, 16, generator=_gen(seed + 500))
    return _text(seed, pooled_output=pooled, guidance=6.0)


# --- Lumina 2 (NextDiT): refiners per stream, then joint layers over [text; image] ---
LUMINA_CONFIG = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": HIDDEN,
                 "cap_feat_dim": TEXT_DIM, "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True,
                 "n_heads": 2, "n_kv_heads": 2, "multiple_of": 16, "axes_dims": [8, 12, 12],
                 "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}


def lumina_conditioning(seed: int = 1):
    return _text(seed, attention_mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long))


# --- Z-Image: the same NextDiT class with Z-Image's modulation and pad tokens ---
# Its modulation takes a 256-wide time embedding into min(dim, 256) inputs: dim must be >= 256.
ZIMAGE_CONFIG = {**LUMINA_CONFIG, "dim": 256, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48],
                 "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
                 "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
                 "pad_tokens_multiple": 32}


# --- HiDream: MoE blocks; each block also reads one Llama layer's hidden states ---
HIDREAM_CONFIG = {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                  "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                  "caption_channels": [TEXT_DIM, TEXT_DIM], "text_emb_dim": 16, "num_routed_experts": 2,
                  "num_activated_experts": 1, "axes_dims_rope": (16, 8, 8), "max_resolution": (32, 32),
                  "llama_layers": [0, 1, 2]}


def hidream_conditioning(seed: int = 1):
    gen = _gen(seed + 500)
    pooled = torch.randn(1, 16, generator=gen)
    llama = torch.randn(1, 3, TEXT_TOKENS, TEXT_DIM, generator=gen)  # [B, llama layers, tokens, dim]
    return _text(seed, pooled_output=pooled, conditioning_llama3=llama)


# --- AuraFlow: MMDiT double layers, then single layers over [text; image]; learned pos. embedding ---
AURA_CONFIG = {"cond_seq_dim": TEXT_DIM, "max_seq": 64, "n_double_layers": 1, "n_layers": 3, "dim": HIDDEN,
               "n_heads": 2, "global_conddim": HIDDEN, "in_channels": 4, "out_channels": 4, "patch_size": 2}


# --- Cosmos predict2 (MiniTrainDIT): adaLN-LoRA blocks over [B, T, H, W, D] ---
COSMOS_CONFIG = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
                 "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
                 "model_channels": HIDDEN, "concat_padding_mask": True, "crossattn_emb_channels": TEXT_DIM,
                 "pos_emb_cls": "rope3d", "pos_emb_learnable": True, "pos_emb_interpolation": "crop",
                 "min_fps": 1, "max_fps": 30, "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": 2,
                 "num_heads": 2, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
                 "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
                 "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
                 "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}


# --- Wan 2.1 image-to-video: 16 noise + 4 mask + 16 image channels in, CLIP image tokens in cross-attention ---
WAN_SMALL = {"image_model": "wan2.1", "dim": HIDDEN, "ffn_dim": 128, "num_heads": 2, "num_layers": 2,
             "text_dim": TEXT_DIM, "freq_dim": 256, "patch_size": (1, 2, 2)}
WAN_I2V_CONFIG = {**WAN_SMALL, "model_type": "i2v", "in_dim": 36, "out_dim": 16}
WAN_LATENT = (16, 2, 8, 8)
CLIP_VISION_TOKENS = 16  # the real encoder gives 257; the projection takes any count


def wan_i2v_conditioning(seed: int = 1):
    """What WanImageToVideo puts on both conditionings: the start image's latent and a mask
    marking its frame as given, and CLIP vision hidden states (the same picture for cond and uncond)."""
    import comfy.clip_vision
    gen = _gen(4242)
    clip = comfy.clip_vision.Output()
    clip.penultimate_hidden_states = torch.randn(1, CLIP_VISION_TOKENS, 1280, generator=gen)
    start = torch.randn(1, *WAN_LATENT, generator=gen)
    start[:, :, 1:] = 0.0
    mask = torch.ones(1, 1, WAN_LATENT[1], WAN_LATENT[2], WAN_LATENT[3])
    mask[:, :, :1] = 0.0
    return _text(seed, clip_vision_output=clip, concat_latent_image=start, concat_mask=mask)


# --- Wan 2.2 5B (TI2V): 48-channel latent of the Wan 2.2 VAE, model_base.WAN22 ---
# 256 wide (8 heads of 32): its 1x2x2 patches hold 192 values (see LTXV_WIDTH)
WAN22_CONFIG = {**WAN_SMALL, "model_type": "t2v", "in_dim": 48, "out_dim": 48, "dim": 256, "ffn_dim": 512,
                "num_heads": 8}


def _plain_text(seed: int = 1):
    return _text(seed)


FAMILIES = {f.name: f for f in (
    _family("ltxv", "LTXV", "LTXVModel", (("transformer_blocks", "BasicTransformerBlock"),),
            LTXV_CONFIG, ltxv_conditioning, (128, 2, 4, 4)),
    _family("qwen-image", "QwenImage", "QwenImageTransformer2DModel",
            (("transformer_blocks", "QwenImageTransformerBlock"),), QWEN_CONFIG, qwen_conditioning, QWEN_LATENT),
    _family("qwen-image-edit", "QwenImage", "QwenImageTransformer2DModel",
            (("transformer_blocks", "QwenImageTransformerBlock"),), QWEN_CONFIG, qwen_edit_conditioning,
            QWEN_LATENT),
    _family("mochi", "GenmoMochi", "AsymmDiTJoint", (("blocks", "AsymmetricJointBlock"),),
            MOCHI_CONFIG, mochi_conditioning, (12, 2, 8, 8)),
    _family("hunyuan-video", "HunyuanVideo", "HunyuanVideo",
            (("double_blocks", "DoubleStreamBlock"), ("single_blocks", "SingleStreamBlock")),
            HUNYUAN_CONFIG, hunyuan_conditioning, (16, 2, 8, 8)),
    _family("lumina2", "Lumina2", "NextDiT", (("layers", "JointTransformerBlock"),),
            LUMINA_CONFIG, lumina_conditioning, (16, 8, 8), block_hook=False),
    _family("z-image", "ZImage", "NextDiT", (("layers", "JointTransformerBlock"),),
            ZIMAGE_CONFIG, _plain_text, (16, 8, 8), block_hook=False),
    _family("hidream", "HiDream", "HiDreamImageTransformer2DModel",
            (("double_stream_blocks", "HiDreamImageBlock"), ("single_stream_blocks", "HiDreamImageBlock")),
            HIDREAM_CONFIG, hidream_conditioning, (16, 8, 8), block_hook=False),
    _family("auraflow", "AuraFlow", "MMDiT", (("double_layers", "MMDiTBlock"), ("single_layers", "DiTBlock")),
            AURA_CONFIG, _plain_text, (4, 8, 8)),
    _family("cosmos-predict2", "CosmosT2IPredict2", "MiniTrainDIT", (("blocks", "Block"),),
            COSMOS_CONFIG, _plain_text, (16, 1, 8, 8), block_hook=False),
    _family("wan21-i2v", "WAN21_I2V", "WanModel", (("blocks", "WanAttentionBlock"),),
            WAN_I2V_CONFIG, wan_i2v_conditioning, WAN_LATENT),
    _family("wan22-5b", "WAN22_T2V", "WanModel", (("blocks", "WanAttentionBlock"),),
            WAN22_CONFIG, _plain_text, (48, 2, 8, 8)),
)}
