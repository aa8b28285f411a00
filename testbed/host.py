"""Boot the real ComfyUI in this process (CPU) and load this pack as a custom node."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_MODULE = "comfyui_duca"


def comfy_path() -> Path:
    path = os.environ.get("DUCA_COMFYUI_PATH")
    if not path:
        raise RuntimeError("DUCA_COMFYUI_PATH is not set: run through `python3 tools/host.py ...`")
    return Path(path)


def boot() -> None:
    """Import ComfyUI on the CPU. Idempotent."""
    root = str(comfy_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # must precede comfy.model_management
    # PyTorch's fused attention, what GPU users get by default (CPU default is sub-quadratic).
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401


def load_pack():
    """Import the pack the way ComfyUI does: a package from its folder."""
    boot()
    module = sys.modules.get(PACK_MODULE)
    if module is not None and hasattr(module, "comfy_entrypoint"):
        return module
    if module is None:
        spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = sys.modules[PACK_MODULE] = importlib.util.module_from_spec(spec)
    # registered by the tests without its __init__ (host-free layers imported already): run it now
    module.__spec__.loader.exec_module(module)
    return module


def node_classes() -> dict:
    """The pack's nodes by id, got as ComfyUI gets them: the extension from `comfy_entrypoint`,
    its node list, each node's schema."""
    pack = load_pack()
    extension = asyncio.run(pack.comfy_entrypoint())
    return {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}


def node(node_id: str, unique_id: str | None = None):
    """A node to call `execute` on as ComfyUI runs it: a clone of the class that holds the
    hidden inputs (`cls.hidden.unique_id`)."""
    from comfy_api.latest import io
    hidden = {io.Hidden.unique_id: unique_id}
    # Newer hosts pass the executor's V3 data, which holds the hidden inputs; older ones pass them alone.
    if hasattr(io.HiddenHolder, "from_v3_data"):
        return node_classes()[node_id].PREPARE_CLASS_CLONE({"hidden_inputs": hidden})
    return node_classes()[node_id].PREPARE_CLASS_CLONE(hidden)
