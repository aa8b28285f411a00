"""Stable Diffusion WebUI Forge: the pack's methods on Forge's U-Net patcher. Nothing here
imports Forge: the glue needs only the patcher contract Forge shares with ComfyUI (`clone()`,
`set_model_unet_function_wrapper`, `set_model_patch_replace`), and the script in `scripts/`
is the only file that talks to Forge's UI."""
from .patch import SamplingPass, accelerate
from .settings import INFOTEXT_KEYS, METHODS, PRESET_NAMES, ForgeSettings

__all__ = ["INFOTEXT_KEYS", "METHODS", "PRESET_NAMES", "ForgeSettings", "SamplingPass", "accelerate"]
