"""Fixtures on the real ComfyUI host: the pack loaded as a custom node, small real-class models."""
import pytest

from testbed import host, models


@pytest.fixture(scope="session")
def pack():
    return host.load_pack()


@pytest.fixture(scope="session")
def flux(pack):
    return models.flux(seed=0)


@pytest.fixture(scope="session")
def flux_conds(flux):
    positive = models.flux_conditioning(model=flux, seed=1)
    negative = models.flux_conditioning(model=flux, seed=2)
    return positive, negative


@pytest.fixture(scope="session")
def duca(pack):
    """The pack's public entry points, imported as ComfyUI imports them."""
    from comfyui_duca import cache_core
    from comfyui_duca.glue import patch
    return patch, cache_core


# Small SD U-Nets of the real class, for the DeepCache and U-Net schedule tests (a module may
# define its own `conds`).
@pytest.fixture(scope="module")
def unet(pack):
    return models.sd_unet_small(seed=1)


@pytest.fixture(scope="module")
def conds(unet):
    return models.class_conditioning(unet, 0), models.class_conditioning(unet, -1)


@pytest.fixture(scope="module")
def trained(pack):
    model = models.sd_unet_trained()
    return model, models.class_conditioning(model, 1), models.class_conditioning(model, -1)
