"""The real ComfyUI server with this pack in a temporary custom_nodes folder, small models
in its models folder, and a folder for the artifacts (screenshots, logs) the tests keep."""
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the e2e helper modules (their names are unique: e2e_*)
    sys.path.insert(0, str(HERE))

from e2e_models import write_models
from e2e_server import PACK_FOLDER, ComfyServer

from testbed import host

REPO = HERE.parent.parent
ARTIFACTS = REPO / "out" / "e2e"  # git-ignored


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, artifacts):
    host.boot()  # ComfyUI's classes write the small checkpoints
    base = tmp_path_factory.mktemp("comfy_base")
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    shutil.copytree(HERE / "helper_pack", custom / "duca_e2e_helpers")
    write_models(base / "models")
    server = ComfyServer(host.comfy_path(), base).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / "server.log")
        shutil.rmtree(base / "models", ignore_errors=True)  # over 1 GB, rewritten by every session


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info")
