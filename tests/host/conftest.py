"""Fixtures on the real ComfyUI host: the pack loaded as a custom node, small real-class models."""
import types

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
    """The pack's public entry points, imported as ComfyUI imports them: the glue's patch module,
    and the core (plans, stats) with the methods' settings beside it."""
    from comfyui_duca import cache_core, methods
    from comfyui_duca.glue import patch
    core = types.SimpleNamespace(**{name: getattr(cache_core, name) for name in cache_core.__all__},
                                 **{name: getattr(methods, name) for name in methods.__all__},
                                 tokens=cache_core.tokens, store=cache_core.store, schedule=cache_core.schedule)
    return patch, core


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


@pytest.fixture(scope="module")
def one_thread():
    """Models this small gain nothing from a second thread, and on a shared 2-core machine
    two threads per process stall each other (measured: 6-step samples of the family models took
    seconds each with two threads under load, under 0.1 s with one). A module asks for it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
