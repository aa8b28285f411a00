"""Run by Stable Diffusion WebUI Forge when it installs the extension. Nothing to install: the
pack needs only torch, which Forge has."""
