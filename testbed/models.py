"""Small models built from ComfyUI's own classes, with seeded random weights.

Random weights exercise the real blocks, wrappers and samplers; they do not
behave like trained models (see bench/ for fidelity figures on trained ones).
"""
from __future__ import annotations

import dataclasses
import importlib

import torch

# The params dataclasses of the classes built here from a hand-made unet_config.
PARAMS = {"flux": ("comfy.ldm.flux.model", "FluxParams"), "chroma": ("comfy.ldm.chroma.model", "ChromaParams"),
          "hunyuan_video": ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams"),
          "chroma_radiance": ("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams")}
# Newer hosts made these params fields required. Their values here are what the host's checkpoint
# detection (comfy.model_detection.detect_unet_config) gives a checkpoint of the testbed's layout,
# which lacks the feature they switch on; `host_config` checks that against detection.
DETECTED = {
    "meanflow_sum": False,  # HunyuanVideo: True only with vision_in (HunyuanVideo 1.5 image-to-video)
    "txt_ids_dims": [],     # Flux, Chroma: set only for Flux 2, Ovis and LongCat-Image
    "vec_in_dim": None,     # Chroma: no vector_in
    "use_x0": False,        # Chroma Radiance: True only for its x0-predicting checkpoints
    "use_sequential_txt_ids": False,  # Chroma Radiance: True only for checkpoints with that marker
}


def init_weights(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """ComfyUI builds layers without initializing them: fill every tensor deterministically.

    Buffers made with torch.empty (SD3's positional embedding) are filled too;
    buffers the model computed itself are left alone.
    """
    first = next(module.parameters())
    device = first.device  # drawn where the weights live: billions of CPU draws take minutes
    gen = torch.Generator(device).manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, device=device)

    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name.endswith("pos_embed") and buffer.is_floating_point():
                buffer.copy_(randn(buffer.shape) * 0.02)
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("scale")):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(randn(p.shape) * 0.01)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(randn(p.shape) * min(std, fan_in ** -0.5))


def host_config(unet_config: dict) -> dict:
    """`unet_config` plus the fields this host's params dataclass requires and it leaves out (feature
    detection: an older host has no such field and gets the config unchanged)."""
    where = PARAMS.get(unet_config.get("image_model"))
    if where is None:
        return unet_config
    params = getattr(importlib.import_module(where[0]), where[1])
    required = {f.name for f in dataclasses.fields(params)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(unet_config)
    unknown = missing - set(DETECTED)
    if unknown:
        raise RuntimeError(f"this host's {params.__name__} requires {sorted(unknown)}: add to testbed.models.DETECTED "
                           "what comfy.model_detection gives a checkpoint without that feature")
    return {**unet_config, **{name: DETECTED[name] for name in missing}}


def check_detected(model, unet_config: dict) -> None:
    """The fields `host_config` added are what the host's detection reads from the built model's weights."""
    added = {name: value for name, value in model.model_config.unet_config.items()
             if name in DETECTED and name not in unet_config}
    if added:
        import comfy.model_detection
        detected = comfy.model_detection.detect_unet_config(model.diffusion_model.state_dict(), "")
        wrong = {name: (value, detected.get(name)) for name, value in added.items() if detected.get(name) != value}
        assert not wrong, f"testbed.models.DETECTED disagrees with the host's detection (ours, the host's): {wrong}"


def build(config_class, unet_config: dict, seed: int, dtype=torch.float32, device=None):
    """A model of the host's `config_class` (a comfy.supported_models class) with seeded random weights,
    built in `dtype` directly on `device` (default: the CPU)."""
    model_config = config_class(host_config(unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=device)
    check_detected(model, unet_config)
    init_weights(model.diffusion_model, seed)
    model.diffusion_model.eval()
    return patcher(model)


def patcher(model):
    import comfy.model_management as mm
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


FLUX_SMALL = dict(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[8, 12, 12],
                  context_in_dim=32, vec_in_dim=16)
# The CPU benchmark size of the issue: hidden 512, 4 double + 8 single blocks.
FLUX_BENCH = dict(hidden_size=512, num_heads=8, depth=4, depth_single_blocks=8, axes_dim=[16, 24, 24],
                  context_in_dim=256, vec_in_dim=64)
# GPU benchmark sizes: the published architectures, random weights (they size the work).
FLUX_DEV = dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                context_in_dim=4096, vec_in_dim=768)
WAN21_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096)


def flux(seed: int = 0, family: str = "flux", dtype=torch.float32, device=None, **size):
    """A Flux (or FluxSchnell-style, guidance_embed=False) model of the real class,
    built in `dtype` directly on `device` (default: the CPU)."""
    import comfy.supported_models
    cfg = dict(FLUX_SMALL)
    cfg.update(size)
    guidance = cfg.pop("guidance_embed", True)
    unet_config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
                   "mlp_ratio": 4.0, "theta": 10000, "qkv_bias": True, "guidance_embed": guidance, **cfg}
    config_class = comfy.supported_models.Flux if guidance else comfy.supported_models.FluxSchnell
    return build(config_class, unet_config, seed, dtype, device)


def flux_controlnet(model, seed: int = 0):
    """An XLabs-style ControlNet of the host's Flux ControlNet class for `model` (a pixel hint,
    8x downsampled), loaded as the host loads one: it adds a residual after each block."""
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops
    config = {k: v for k, v in model.model.model_config.unet_config.items() if k not in ("dtype", "device")}
    control_model = comfy.ldm.flux.controlnet.ControlNetFlux(
        mistoline=False, operations=comfy.ops.disable_weight_init, device=torch.device("cpu"),
        dtype=torch.float32, **config)
    init_weights(control_model, seed)
    with torch.no_grad():  # scaled to keep the hint's signal through the 8-layer hint encoder
        for conv in control_model.input_hint_block:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.mul_(2.0 / (conv.weight[0].numel() ** 0.5 * conv.weight.std()))
    return comfy.controlnet.ControlNet(control_model.eval(), load_device=torch.device("cpu"),
                                       manual_cast_dtype=None, extra_conds=["y", "guidance"])


def qwen_controlnet(model, seed: int = 0):
    """An InstantX-style ControlNet of the host's Qwen-Image ControlNet class for `model`, loaded as
    the host loads one (its hint is a Wan 2.1 VAE latent of the control picture)."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.qwen_image.controlnet
    import comfy.ops
    config = {k: v for k, v in model.model.model_config.unet_config.items()
              if k not in ("dtype", "device", "image_model")}
    control_model = comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(
        operations=comfy.ops.disable_weight_init, device=torch.device("cpu"), dtype=torch.float32, **config)
    init_weights(control_model, seed)
    return comfy.controlnet.ControlNet(control_model.eval(), compression_ratio=1,
                                       latent_format=comfy.latent_formats.Wan21(),
                                       load_device=torch.device("cpu"), manual_cast_dtype=None, extra_conds=[])


def wan_vae(seed: int = 0, dim: int = 16):
    """A narrow Wan 2.1 VAE (the host picks the class from the state dict's keys and its width from
    them), as the host's VAE loader builds one."""
    import comfy.ldm.wan.vae
    import comfy.sd
    model = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True])
    init_weights(model, seed)
    return comfy.sd.VAE(sd=model.state_dict())


def with_control(positive, negative, controlnet, image, strength=1.0, start=0.0, end=1.0, vae=None):
    """Both conditionings with the ControlNet applied, by the host's Apply ControlNet node (`vae`:
    for ControlNets whose hint is a latent)."""
    import nodes
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, controlnet, image,
                                                            strength, start, end, vae=vae)


def flux_conditioning(batch: int = 1, tokens: int = 8, seed: int = 1, model=None, guidance: float = 3.5):
    """Hand-made CONDITIONING for a small Flux: context and pooled output."""
    dm = model.model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, dm.params.context_in_dim, generator=gen)
    pooled = torch.randn(batch, dm.params.vec_in_dim, generator=gen)
    return [[context, {"pooled_output": pooled, "guidance": guidance}]]


SD15_SMALL = dict(model_channels=320, channel_mult=[1, 1], num_res_blocks=[1, 1],
                  transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
                  transformer_depth_middle=1, num_head_channels=64, context_dim=768)


def sd_unet(seed: int = 0):
    """A small SD1.5-style U-Net of ComfyUI's real class (about 30M parameters)."""
    import comfy.supported_models
    unet_config = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                   "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
                   "use_linear_in_transformer": False, "num_heads": -1, **SD15_SMALL}
    return build(comfy.supported_models.SD15, unet_config, seed)


def sd_conditioning(batch: int = 1, tokens: int = 77, seed: int = 1, dim: int = 768):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dim, generator=gen), {}]]


# Stable Video Diffusion: the layout ComfyUI detects from an SVD checkpoint (model_detection.py), few channels.
# SVD_img2vid forces 64-channel heads; its y is 3 x 256 (fps, motion bucket, augmentation: encode_adm).
SVD_SMALL = dict(model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                 transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=64)
SVD_LAYOUT = dict(num_classes="sequential", adm_in_channels=768, use_linear_in_transformer=True,
                  use_temporal_resblock=True, use_temporal_attention=True, extra_ff_mix_layer=True,
                  use_spatial_context=True, merge_strategy="learned_with_images", merge_factor=0.0,
                  video_kernel_size=[3, 1, 1], disable_temporal_crossattention=False)


def svd_unet(seed: int = 0, **size):
    """A small SVD img2vid U-Net of ComfyUI's real class: temporal ResBlocks (VideoResBlock) and temporal
    transformer blocks (SpatialVideoTransformer.time_stack); the latent's batch is the frames."""
    import comfy.supported_models
    unet_config = {"use_checkpoint": False, "image_size": 32, "in_channels": 8, "out_channels": 4,
                   "use_spatial_transformer": True, "legacy": False, **SVD_LAYOUT, **SVD_SMALL, **size}
    return build(comfy.supported_models.SVD_img2vid, unet_config, seed)


def svd_conditioning(seed: int = 1, dim: int = 64, height: int = 8, width: int = 8, empty: bool = False):
    """CONDITIONING as SVD_img2vid_Conditioning makes it: a pooled image embedding (the context) and the
    init image's latent (concat_latent_image, the c_concat); `empty`: its zeroed negative."""
    gen = torch.Generator().manual_seed(seed)
    pooled = torch.randn(1, 1, dim, generator=gen)
    image = torch.randn(1, 4, height, width, generator=gen)
    if empty:
        pooled, image = torch.zeros_like(pooled), torch.zeros_like(image)
    return [[pooled, {"motion_bucket_id": 127, "fps": 6, "augmentation_level": 0.0, "concat_latent_image": image}]]


def svd_latent(frames: int = 5, height: int = 8, width: int = 8):
    return torch.zeros(frames, 4, height, width)


def save_unet_checkpoint(path, seed: int = 0) -> None:
    """A U-Net-only safetensors file that ComfyUI's loader detects from keys and shapes."""
    import comfy.utils
    model = sd_unet(seed)
    comfy.utils.save_torch_file(model.model.diffusion_model.state_dict(), str(path))


# SD1.5's layout (4 levels, attention on the first 3, context 768, 320 channels: what loaders match
# SD1.5 on) with one ResBlock per level instead of two: about a third of the U-Net's compute
SD15_LAYOUT_SMALL = dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[1, 1, 1, 1],
                         transformer_depth=[1, 1, 1, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0],
                         transformer_depth_middle=1, num_heads=8, num_head_channels=-1, context_dim=768)


def save_sd15_checkpoint(path, seed: int = 0) -> None:
    """A single-file SD1.5-style checkpoint with random weights, in the original key layout a WebUI
    loads: a U-Net of SD15_LAYOUT_SMALL, a full-size CLIP-L text encoder and SD's VAE."""
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils
    unet_config = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                   "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
                   "use_linear_in_transformer": False, **SD15_LAYOUT_SMALL}
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    unet = model_config.get_model({}).diffusion_model
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(
        ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                      ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0), embed_dim=4)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    state = {}
    for prefix, module, part_seed in (("model.diffusion_model.", unet, seed), ("first_stage_model.", vae, seed + 1),
                                      ("cond_stage_model.", clip, seed + 2)):
        init_weights(module, part_seed, std=0.02)
        state.update({prefix + k: v.contiguous() for k, v in module.state_dict().items()
                      if not k.endswith("position_ids")})
    comfy.utils.save_torch_file(state, str(path))


def sample(model, positive, negative=None, *, steps=8, cfg=1.0, sampler="euler", scheduler="simple",
           seed=0, batch=1, height=32, width=32, channels=16, latent=None, denoise=1.0, callback=None):
    """Sample with ComfyUI's own KSampler path; returns the final latent."""
    import comfy.sample
    if latent is None:
        latent = torch.zeros(batch, channels, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    if negative is None:
        negative = positive
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, seed=seed, disable_pbar=True, callback=callback)


def chroma(seed: int = 0, **size):
    """A small Chroma (Flux blocks without per-block modulation, an approximator instead)."""
    import comfy.supported_models
    cfg = dict(FLUX_SMALL)
    cfg.update(size)
    cfg.pop("vec_in_dim", None)
    unet_config = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
                   "mlp_ratio": 4.0, "theta": 10000, "qkv_bias": True, "in_dim": 64,
                   "out_dim": cfg["hidden_size"], "hidden_dim": 128, "n_layers": 2, **cfg}
    return build(comfy.supported_models.Chroma, unet_config, seed)


def chroma_conditioning(batch: int = 1, tokens: int = 8, seed: int = 1, model=None):
    dm = model.model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dm.params.context_in_dim, generator=gen), {"guidance": 0.0, "pooled_output": None}]]


# --- small trained models (weights in testbed/weights, made by training/train_small_models.py) ---
WEIGHTS = __import__("pathlib").Path(__file__).resolve().parent / "weights"
CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field")
FLUX_TRAINED = dict(hidden_size=128, num_heads=4, depth=3, depth_single_blocks=3, axes_dim=[8, 12, 12],
                    context_in_dim=64, vec_in_dim=32, guidance_embed=False)
# the random-weight U-Net of the plumbing tests: 2 levels, 7 transformer layers
SD_SMALL = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, num_head_channels=16,
                context_dim=64)
# the trained one is laid out like SDXL's: 3 levels, no attention at the full resolution (where it
# costs most), so the shallow path DeepCache keeps computing is a small share of a call
SD_TRAINED = dict(SD_SMALL, channel_mult=[1, 2, 4], num_res_blocks=[1, 1, 1], transformer_depth=[0, 1, 1],
                  transformer_depth_output=[0, 0, 1, 1, 1, 1])
FLUX_TRAINED_PIXELS = 64   # picture side: 64x64 RGB -> 32x32x16 latent -> 256 tokens
SD_TRAINED_PIXELS = 32     # picture side: 32x32 grey -> 16x16x4 latent
# the cfg both trained models are sampled at: there the U-Net's samples differ between classes and
# between seeds about as much as its training crops do (higher cfg saturates more pixels)
TRAINED_CFG = 3.0
CONTEXT_TOKENS = 8


def class_conditioning(model, label: int, batch: int = 1):
    """Fixed context (and pooled) tensors per class; label -1 is the empty prompt (for cfg)."""
    dm = model.model.diffusion_model
    context_dim = dm.params.context_in_dim if hasattr(dm, "params") else SD_SMALL["context_dim"]
    gen = torch.Generator().manual_seed(1000 + label)
    context = torch.randn(1, CONTEXT_TOKENS, context_dim, generator=gen)
    extra = {}
    if hasattr(dm, "params") and dm.params.vec_in_dim:
        extra["pooled_output"] = torch.randn(1, dm.params.vec_in_dim, generator=gen).repeat(batch, 1)
    if label < 0:
        context = torch.zeros_like(context)
        extra = {k: torch.zeros_like(v) for k, v in extra.items()}
    return [[context.repeat(batch, 1, 1), extra]]


def sd_unet_small(seed: int = 0, **size):
    """An in-process SD1.5-class U-Net of any size (the loader forces 320 channels; this does not)."""
    import comfy.supported_models
    unet_config = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                   "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
                   "use_linear_in_transformer": False, "num_heads": -1, **SD_SMALL, **size}
    return build(comfy.supported_models.SD15, unet_config, seed)


def load_weights(model, path):
    """`model` (a ModelPatcher) with its diffusion model's weights read from the safetensors `path`, as the
    host's loader reads a checkpoint: through its config's key conversions (newer hosts renamed norms' `scale`
    to `weight`; a file written by a newer host is read back by an older one), dropping keys its class no longer has (newer hosts' NextDiT lost an unused `norm_final`).
    Every weight the model has must be in the file."""
    import comfy.utils
    state = comfy.utils.load_torch_file(str(path), safe_load=True)
    state = model.model.model_config.process_unet_state_dict({k: v.float() for k, v in state.items()})
    own = model.model.diffusion_model.state_dict().keys()
    for key in [k for k in state if k not in own and k.endswith(".weight")]:  # written by a newer host,
        older = key.removesuffix(".weight") + ".scale"                          # read by an older one
        if older in own:
            state[older] = state.pop(key)
    missing, _ = model.model.diffusion_model.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"{path} lacks weights of this host's {type(model.model.diffusion_model).__name__}: {missing}")
    return model


def _load_trained(model, name: str):
    return load_weights(model, WEIGHTS / f"{name}.safetensors")


def flux_trained():
    """The small Flux trained on photographs (see training/); 64x64 pictures, 256 tokens."""
    return _load_trained(flux(**FLUX_TRAINED), "flux_small")


def sd_unet_trained():
    """The small SD U-Net trained on photographs (see training/); 32x32 pictures."""
    return _load_trained(sd_unet_small(**SD_TRAINED), "sd_unet_small")


def class_picture(model, label: int, seed: int, side: int, channels: int, steps: int, cfg: float = TRAINED_CFG):
    """A trained model's decoded picture of class `label` (against the empty prompt)."""
    from . import pixel_latents
    latent = sample(model, class_conditioning(model, label), class_conditioning(model, -1), steps=steps,
                    cfg=cfg, seed=seed, channels=channels, height=side * 4, width=side * 4)
    return pixel_latents.decode(model.model.process_latent_in(latent))[0]


def wan(seed: int = 0, dtype=torch.float32, device=None, config_class: str = "WAN21_T2V", **size):
    """A Wan 2.1 text-to-video model of ComfyUI's real class (small unless sized)."""
    import comfy.supported_models
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2,
                   "num_layers": 4, "in_dim": 16, "out_dim": 16, "text_dim": 32, "freq_dim": 256,
                   "patch_size": (1, 2, 2), **size}
    return build(getattr(comfy.supported_models, config_class), unet_config, seed, dtype, device)


VACE_CHANNELS = 32  # VACE's control video: two 16-channel latents (kept and edited parts)


def wan_vace(seed: int = 0, **size):
    """A Wan 2.1 VACE model of the host's class: VACE blocks beside every second block, each
    adding a hint of the control video to the hidden state after its block, outside the block
    hooks (as ControlNets do)."""
    return wan(seed, config_class="WAN21_Vace", model_type="vace", vace_layers=2,
               vace_in_dim=VACE_CHANNELS + 64, **size)  # + VACE's 64-channel mask


def with_vace(conditioning, frames: torch.Tensor, strength: float = 1.0):
    """`conditioning` with a VACE control video [1, 32, frames, height, width] (what WanVaceToVideo
    puts on it; the host makes the default all-ones mask)."""
    return [[tensor, {**extras, "vace_frames": [frames], "vace_strength": [strength]}]
            for tensor, extras in conditioning]


def text_conditioning(dim: int, batch: int = 1, tokens: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dim, generator=gen), {}]]


def video_latent(batch: int = 1, channels: int = 16, frames: int = 3, height: int = 8, width: int = 8):
    return torch.zeros(batch, channels, frames, height, width)


def sd3(seed: int = 0, depth: int = 2, **extra):
    """A small SD3-class MMDiT (hidden 64 x depth)."""
    import comfy.supported_models
    unet_config = {"in_channels": 16, "pos_embed_scaling_factor": None, "depth": depth, "patch_size": 2,
                   "adm_in_channels": 32, "pos_embed_max_size": 32, "num_patches": 32 * 32,
                   "context_embedder_config": {"target": "torch.nn.Linear",
                                               "params": {"in_features": 32, "out_features": 64 * depth}},
                   "out_channels": 16, **extra}
    return build(comfy.supported_models.SD3, unet_config, seed)
