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
