"""Small models of Flux 2 (dev and Klein), LongCat-Image, Krea 2 and ERNIE-Image, of ComfyUI 0.33's own classes.

Each entry of `FAMILIES` (a list of `testbed.families.Family`) builds a CPU-sized model of the
family's `comfy.supported_models` config and `comfy.model_base` class (float32, seeded random
weights, hidden 256, three to five blocks, 16 image tokens (Flux 2: 64)), with the conditioning and latent it
takes, as `testbed.families` does for the older host's families:

    family = next(f for f in FAMILIES if f.name == "flux2")
    model = family.build(0)
    out = models.sample(model, family.conditioning(1), family.negative(2), latent=family.latent(1),
                        steps=6, cfg=3.0)

Nothing of the host is touched at import time: this module imports on ComfyUI 0.3.75 too, whose
`comfy.supported_models` has Flux2 (without Klein's text encoder; flux2 and flux2-klein build and
sample there as well) but none of LongCatImage, Krea2 and ErnieImage: building those there raises
AttributeError. The sizes keep the real models' head
width (128) and everything ComfyUI's checkpoint detection (comfy.model_detection) hard-codes for the
family, so what detection reads back from a built model's weights is the config it was built from;
ERNIE-Image is the exception: 0.33 detects it from one key and builds the released size (all
constructor defaults), so its small size exists only through an explicit unet_config.

| family | config class | diffusion model | extra conditioning keys | latent |
|---|---|---|---|---|
| flux2 | Flux2 (image_model "flux2") | Flux (comfy.ldm.flux.model) | guidance (guidance_embed), pooled_output None | [B,128,H,W] |
| flux2-klein | Flux2, guidance_embed False | Flux | pooled_output None | [B,128,H,W] |
| longcat-image | LongCatImage (image_model "flux") | Flux | - (model_base.LongCatImage drops guidance) | [B,16,H,W] |
| krea2 | Krea2 | SingleStreamDiT (comfy.ldm.krea2) | - | [B,16,1,H,W] (Wan 2.1 latent format) |
| ernie-image | ErnieImage | ErnieImageModel (comfy.ldm.ernie) | - | [B,128,H,W] (Flux 2 latent format) |

Flux 2 (dev and Klein) and LongCat-Image are the host's Flux class, the class of the older host's
Flux (0.3.75 already has supported_models.Flux2 and model_base.Flux2; 0.33 adds FluxParams fields:
txt_ids_dims, now required, and yak_mlp/txt_norm, the Ovis layout). Flux 2 is that class with
global modulation (one Modulation per stream kind for all blocks, none inside the blocks), SiLU-gated
MLPs (mlp_ratio 3), no biases, 4 rope axes, patch size 1 on a 128-channel latent and no vector_in;
model_base.Flux2 left-pads the text to 512 tokens, so the text stream is always 512 tokens long
(mostly zeros here). Klein is detected as the same Flux2 config: 0.33's model_detection has no Klein
branch, its checkpoints differ from dev only in having no guidance_in (guidance_embed False), the
text width (3 x the Qwen 3 width: 7680 or 12288, dev 3 x 5120) and block counts (4B: 5 double + 20
single, dev 8 + 48), and supported_models.Flux2.clip_target picks its Qwen 3 text encoder. It has
its own entry for the guidance-free layout. LongCat-Image is a plain Flux 1 layout (16 channels,
patch 2, 3 rope axes) detected by context_in_dim == 3584 with no vector_in; txt_ids_dims [1, 2]
gives its text tokens positions on both spatial axes, and model_base.LongCatImage shifts the image
positions past the text (rope_options shift_t 1, shift_y and shift_x the text length).

Block lists (`blocks`: attribute of the diffusion model, class of its blocks) and how each calls
`patches_replace["dit"]` in ComfyUI 0.33 (keys of the `args` dict a block patch gets; what the
original block returns):

- flux2, flux2-klein, longcat-image: double_blocks / DoubleStreamBlock then single_blocks /
  SingleStreamBlock (comfy.ldm.flux.layers). ("double_block", i) with img, txt, vec, pe,
  attn_mask, transformer_options; returns {"img", "txt"}. ("single_block", i) with img, vec, pe,
  attn_mask, transformer_options, where "img" is [text; image] (text first); returns {"img"}.
  With Flux 2's global modulation "vec" is not the [B, D] vector: double blocks get
  ((img_mod1, img_mod2), (txt_mod1, txt_mod2)), single blocks one ModulationOut (shift, scale,
  gate; each [B, 1, D]). transformer_options carries block_index, block_type ("double"/"single"),
  total_blocks and, for single blocks, img_slice = [text length, sequence length].
- krea2: blocks / SingleStreamBlock (comfy.ldm.krea2.model, not Flux's) over [text; image]; no
  patches_replace hook, the blocks are called directly (attn1_patch / attn1_output_patch only, and
  the DIFFUSION_MODEL wrapper). Before them, txtfusion.layerwise_blocks and txtfusion.refiner_blocks
  (TextFusionBlock, two each) fuse the text encoder's layers (context is [B, T, txtlayers * txtdim]).
- ernie-image: layers / ErnieImageSharedAdaLNBlock over [image; text] (image first); no
  patches_replace hook, and ErnieImageModel.forward does not run the DIFFUSION_MODEL wrapper either.

Required fields: 0.33's FluxParams requires txt_ids_dims, and testbed.models.host_config fills
missing fields only for image_model "flux" (with [], wrong for LongCat-Image and for "flux2", which
it does not handle at all); so the Flux configs here carry every field detection gives, filtered to
the fields the host's FluxParams has (0.3.75 has no txt_ids_dims, yak_mlp, txt_norm).
"""
from __future__ import annotations

import dataclasses

import torch

from ..families import NEGATIVE_SEED_OFFSET, TEXT_DIM, Family, _text
from ..models import build

WIDTH = 256  # two heads of the real models' 128: what detection assumes for Flux 2, LongCat and Krea 2

# --- Flux 2: detection's fixed fields for image_model "flux2" (comfy.model_detection) ---
FLUX2_TEXT = 3 * TEXT_DIM  # Flux2TEModel stacks three of the text encoder's layers
FLUX2_CONFIG = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "patch_size": 1,
                "hidden_size": WIDTH, "num_heads": WIDTH // 128, "axes_dim": [32, 32, 32, 32], "theta": 2000,
                "mlp_ratio": 3.0, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
                "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3],
                "context_in_dim": FLUX2_TEXT, "vec_in_dim": None, "depth": 2, "depth_single_blocks": 3,
                "guidance_embed": True, "yak_mlp": False, "txt_norm": False}
# Klein: no guidance_in; 4B's 5 double + 20 single blocks, in proportion
KLEIN_CONFIG = {**FLUX2_CONFIG, "guidance_embed": False, "depth": 1, "depth_single_blocks": 4}
FLUX2_LATENT = (128, 8, 8)

# --- LongCat-Image: a Flux 1 layout that detection tells by its 3584-wide text and no vector_in ---
LONGCAT_TEXT = 3584  # Qwen 2.5 VL 7B's width: the key detection matches it on
LONGCAT_CONFIG = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
                  "hidden_size": WIDTH, "num_heads": WIDTH // 128, "axes_dim": [16, 56, 56], "theta": 10000,
                  "mlp_ratio": 4.0, "qkv_bias": True, "txt_ids_dims": [1, 2], "context_in_dim": LONGCAT_TEXT,
                  "vec_in_dim": None, "depth": 2, "depth_single_blocks": 3, "guidance_embed": False,
                  "yak_mlp": False, "txt_norm": False}
LONGCAT_LATENT = (16, 8, 8)

# --- Krea 2: single-stream blocks; the text is [B, T, txtlayers * txtdim] fused by txtfusion ---
# txtdim 160: the text fusion keeps its fixed 20 heads (detection does not read them)
KREA2_CONFIG = {"image_model": "krea2", "features": WIDTH, "channels": 16, "patch": 2, "layers": 3,
                "heads": WIDTH // 128, "kvheads": 1, "txtlayers": 2, "txtdim": 160}
KREA2_TEXT = KREA2_CONFIG["txtlayers"] * KREA2_CONFIG["txtdim"]
KREA2_LATENT = (16, 1, 8, 8)

# --- ERNIE-Image: shared-AdaLN blocks over [image; text], patch size 1 on the Flux 2 latent ---
ERNIE_CONFIG = {"image_model": "ernie", "hidden_size": WIDTH, "num_attention_heads": WIDTH // 128,
                "num_layers": 3, "ffn_hidden_size": 3 * WIDTH, "in_channels": 128, "out_channels": 128,
                "patch_size": 1, "text_in_dim": TEXT_DIM}
ERNIE_LATENT = (128, 4, 4)


def _flux_fields(unet_config: dict) -> dict:
    """`unet_config` less the fields this host's FluxParams lacks (0.3.75: txt_ids_dims, yak_mlp, txt_norm)."""
    import comfy.ldm.flux.model
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    return {k: v for k, v in unet_config.items() if k in fields or k == "image_model"}


def _build(config_class: str, unet_config: dict, seed: int, flux: bool = False):
    import comfy.supported_models
    config = _flux_fields(unet_config) if flux else dict(unet_config)
    return build(getattr(comfy.supported_models, config_class), config, seed)


# pooled_output None: what Flux 2's text encoders give; 0.3.75's model_base.Flux.encode_adm reads the key
# without a default (0.33 reads it with one, and Flux 2 has no vector_in to take it)
def flux2_conditioning(seed: int = 1):
    return _text(seed, dim=FLUX2_TEXT, pooled_output=None, guidance=4.0)  # FluxGuidance's value for Flux 2 dev


def klein_conditioning(seed: int = 1):
    return _text(seed, dim=FLUX2_TEXT, pooled_output=None)


def longcat_conditioning(seed: int = 1):
    return _text(seed, dim=LONGCAT_TEXT)


def krea2_conditioning(seed: int = 1):
    return _text(seed, dim=KREA2_TEXT)


def ernie_conditioning(seed: int = 1):
    return _text(seed, dim=TEXT_DIM)


def _entry(name, config_class, model_class, blocks, unet_config, conditioning, latent_shape,
           block_hook=True, flux=False):
    return Family(name, config_class, model_class, blocks,
                  build=lambda seed=0: _build(config_class, unet_config, seed, flux),
                  conditioning=conditioning,
                  negative=lambda seed=2: conditioning(seed + NEGATIVE_SEED_OFFSET),
                  latent=lambda batch=1: torch.zeros(batch, *latent_shape),
                  block_hook=block_hook)


FLUX_BLOCKS = (("double_blocks", "DoubleStreamBlock"), ("single_blocks", "SingleStreamBlock"))

FAMILIES = [
    _entry("flux2", "Flux2", "Flux", FLUX_BLOCKS, FLUX2_CONFIG, flux2_conditioning, FLUX2_LATENT, flux=True),
    _entry("flux2-klein", "Flux2", "Flux", FLUX_BLOCKS, KLEIN_CONFIG, klein_conditioning, FLUX2_LATENT, flux=True),
    _entry("longcat-image", "LongCatImage", "Flux", FLUX_BLOCKS, LONGCAT_CONFIG, longcat_conditioning,
           LONGCAT_LATENT, flux=True),
    _entry("krea2", "Krea2", "SingleStreamDiT", (("blocks", "SingleStreamBlock"),), KREA2_CONFIG,
           krea2_conditioning, KREA2_LATENT, block_hook=False),
    _entry("ernie-image", "ErnieImage", "ErnieImageModel", (("layers", "ErnieImageSharedAdaLNBlock"),),
           ERNIE_CONFIG, ernie_conditioning, ERNIE_LATENT, block_hook=False),
]
