"""The pack's layers, read from its imports: each layer imports only the layers below it, only
glue/ talks to ComfyUI, only the nodes use its node schema (comfy_api), and cache_core stays pure
torch; forge/ imports neither ComfyUI nor Forge (only the Forge script in scripts/ talks to Forge).
The folders that drive the host on purpose (bench, tests, testbed, training, tools) are exempt."""
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXEMPT = {"bench", "tests", "testbed", "training", "tools"}
HOST = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution", "nodes",
        "node_helpers", "latent_preview"}  # ComfyUI's top-level modules
SCHEMA = "comfy_api"
# the pack's layers, lowest first (docs/ARCHITECTURE.md); methods/ and slicer/ sit side by side
RANK = {"cache_core": 0, "adapters": 1, "methods": 2, "slicer": 2, "glue": 3, "forge": 3, "nodes": 4, "web": 4,
        "scripts": 5, "__init__.py": 5, "install.py": 5}
FORGE = {"modules", "modules_forge", "backend", "gradio"}  # Forge's top-level modules and its UI toolkit
# What cache_core may import besides its own modules. safetensors: the schedule file format,
# installed with torch by every ComfyUI.
CORE_ALLOWED = set(sys.stdlib_module_names) | {"torch", "safetensors"}


def pack_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] not in EXEMPT and not any(p.startswith(".") for p in parts):
            yield path


def imports(path: Path, root: Path):
    """(line, module) for every import of a file, inside functions too. Relative imports are
    resolved inside the pack and start with "." (the pack's root)."""
    package = list(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            # `from . import nodes` names a module too: check it as the module it imports
            names = [target] if node.module else [target + [alias.name] for alias in node.names]
            yield from ((node.lineno, "." + ".".join(name)) for name in names)


def broken_rule(layer: str, module: str):
    top = module.split(".")[0]
    if module.startswith("."):  # the pack's own module
        target = module[1:].split(".")[0]
        if layer == "cache_core" and target != layer:
            return "cache_core imports only its own modules"
        if target != layer and RANK.get(target, 0) >= RANK.get(layer, 0):
            return f"{layer} may import only the layers below it"
        return None
    if top in HOST and layer != "glue":
        return "only glue/ imports ComfyUI"
    if top in FORGE and layer != "scripts":
        return "only scripts/ (the Forge script) imports Forge"
    if top == SCHEMA and layer not in ("nodes", "__init__.py"):
        return "only nodes/ and the root __init__.py use comfy_api"
    if layer == "cache_core" and top not in CORE_ALLOWED:
        return "cache_core imports nothing but torch and the standard library"
    return None


def violations(root: Path) -> list:
    found = []
    for path in pack_files(root):
        layer = path.relative_to(root).parts[0]
        for line, module in imports(path, root):
            rule = broken_rule(layer, module)
            if rule:
                found.append(f"{path.relative_to(root)}:{line}: imports {module.lstrip('.')} ({rule})")
    return found


def test_every_module_keeps_to_its_layer():
    assert list(pack_files(REPO)), "no pack modules found"
    found = violations(REPO)
    assert not found, "\n".join(found)


def test_each_rule_catches_its_import(tmp_path):
    files = {
        "nodes/a.py": "def f():\n    import comfy.samplers\n",           # inside a function
        "adapters/b.py": "from folder_paths import models_dir\n",
        "adapters/c.py": "from comfy_api.latest import io\n",
        "cache_core/d.py": "import numpy\nfrom ..glue import host\n",
        "glue/e.py": "import comfy.utils\nimport server\nfrom comfy_api.latest import io\n",
        "nodes/f.py": "from comfy_api.latest import io\nfrom ..glue import host\nfrom .. import nodes\n",
        "adapters/h.py": "from ..methods import engine\nfrom ..cache_core import plan\nfrom . import units\n",
        "methods/i.py": "from ..slicer import operators\nfrom ..adapters import registry\n",
        "glue/j.py": "from ..nodes import base\nfrom ..methods import engine\n",
        "__init__.py": "from .nodes import x\nfrom comfy_api.latest import ComfyExtension\n",
        "forge/k.py": "from ..glue import patch\nimport gradio\nfrom ..methods import engine\n",
        "scripts/l.py": "import gradio\nfrom modules import scripts\n",    # the Forge script
        "bench/g.py": "import comfy\n",                                   # exempt
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "adapters/b.py:1: imports folder_paths (only glue/ imports ComfyUI)",
        "adapters/c.py:1: imports comfy_api.latest (only nodes/ and the root __init__.py use comfy_api)",
        "adapters/h.py:1: imports methods (adapters may import only the layers below it)",
        "cache_core/d.py:1: imports numpy (cache_core imports nothing but torch and the standard library)",
        "cache_core/d.py:2: imports glue (cache_core imports only its own modules)",
        "forge/k.py:1: imports glue (forge may import only the layers below it)",
        "forge/k.py:2: imports gradio (only scripts/ (the Forge script) imports Forge)",
        "glue/e.py:3: imports comfy_api.latest (only nodes/ and the root __init__.py use comfy_api)",
        "glue/j.py:1: imports nodes (glue may import only the layers below it)",
        "methods/i.py:1: imports slicer (methods may import only the layers below it)",
        "nodes/a.py:2: imports comfy.samplers (only glue/ imports ComfyUI)",
    ]


PACK = "comfyui_duca"  # the pack's one import name (the host's, the Forge script's, the tests')
# its top-level folders (not nodes/: ComfyUI has a top-level `nodes`), and a name the tests once used
PACK_PARTS = {"cache_core", "adapters", "methods", "slicer", "glue", "forge", "duca_layers"}


def other_import_names(root: Path) -> list:
    """Imports of the pack's modules under another name than `comfyui_duca`, anywhere in the repository."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(p.startswith(".") or p == "out" for p in path.relative_to(root).parts):
            continue
        for line, module in imports(path, root):
            if not module.startswith(".") and module.split(".")[0] in PACK_PARTS:
                found.append(f"{path.relative_to(root)}:{line}: imports {module} (the pack is imported as {PACK})")
    return found


def test_the_pack_is_imported_by_one_name():
    found = other_import_names(REPO)
    assert not found, "\n".join(found)


def test_another_import_name_is_caught(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("from cache_core.plan import Plan\nimport comfyui_duca.methods\n"
                                             "from duca_layers.methods import duca\n")
    assert other_import_names(tmp_path) == [
        "tests/t.py:1: imports cache_core.plan (the pack is imported as comfyui_duca)",
        "tests/t.py:3: imports duca_layers.methods (the pack is imported as comfyui_duca)"]


# What attaches and runs every method: it reads the declared protocol only, never a method's classes.
ATTACH_AND_RUN = ("glue/patch.py", "glue/attach.py", "forge/patch.py", "methods/engine.py", "methods/attach.py")


def test_what_attaches_and_runs_methods_names_none_of_them():
    from comfyui_duca import methods
    from comfyui_duca.methods.protocol import Executor
    classes = {name for name, value in vars(methods).items()
               if isinstance(value, type) and (issubclass(value, Executor) or name.endswith("Config"))}
    assert {"ForecastConfig", "OutputForecast", "DuCaConfig", "DuCa", "ScheduleConfig", "StepReuse"} <= classes
    for name in ATTACH_AND_RUN:
        tree = ast.parse((REPO / name).read_text())
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not used & classes, (name, sorted(used & classes))
        getattr_probes = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                          and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2
                          and getattr(node.args[0], "attr", getattr(node.args[0], "id", None)) in ("method", "executor")]
        assert not getattr_probes, (name, getattr_probes)  # a method's members are declared, not probed
