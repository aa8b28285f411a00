import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `cache_core`, `bench` and `testbed` import from the checkout
    sys.path.insert(0, str(REPO))

# The pack's host-free layers (cache_core, adapters, methods, slicer) as one package for the unit
# tests, without the root __init__.py (which registers ComfyUI nodes): they must import without a host.
LAYERS = "duca_layers"
if LAYERS not in sys.modules:
    package = types.ModuleType(LAYERS)
    package.__path__ = [str(REPO)]
    sys.modules[LAYERS] = package
