import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `bench` and `testbed` import from the checkout
    sys.path.insert(0, str(REPO))

# The pack under its one import name, `comfyui_duca` (as the host and the Forge script import it),
# registered without running its __init__.py (which registers ComfyUI nodes): the unit tests import
# its host-free layers (cache_core, adapters, methods, slicer) without a host. The host tests load
# it fully into the same module (testbed.host.load_pack).
PACK = "comfyui_duca"
if PACK not in sys.modules:
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    sys.modules[PACK] = importlib.util.module_from_spec(spec)
