"""tools/host.py's --comfyui: which arguments it takes, what a folder's venv installs, what its cache key follows."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("host_tool", REPO / "tools" / "host.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

REQUIREMENTS = """comfyui-frontend-package==1.49.6
torch
torchvision
torchaudio
transformers>=4.50.3
Pillow  # a comment
-r more.txt

#non essential dependencies:
pydantic~=2.0
"""


def folder(tmp_path, requirements=REQUIREMENTS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "requirements.txt").write_text(requirements)
    return tmp_path


def test_the_option_is_read_only_where_it_is_the_hosts():
    assert tool.take_comfyui(["--comfyui", "/c", "test", "-x"]) == ("/c", ["test", "-x"])
    assert tool.take_comfyui(["--comfyui=/c", "demo"]) == ("/c", ["demo"])
    assert tool.take_comfyui(["test", "--comfyui", "/c"]) == (None, ["test", "--comfyui", "/c"])
    assert tool.take_comfyui(["--comfyui"]) == (None, ["--comfyui"])


def test_a_folders_venv_takes_its_requirements_with_the_torch_builds_pinned_apart(tmp_path):
    comfyui = folder(tmp_path)
    assert tool.folder_requirements(comfyui) == ["comfyui-frontend-package==1.49.6", "transformers>=4.50.3",
                                                 "Pillow  # a comment", "pydantic~=2.0"]
    assert tool.needs_torchaudio(comfyui)
    assert not tool.needs_torchaudio(folder(tmp_path, "torch\nnumpy\n"))
    assert [line.split("==")[0] for line in tool.pinned(tool.TORCH_BUILDS + tool.TEST_NEEDS)] == \
        ["torch", "torchvision", "pytest", "scikit-image"]


def test_the_cache_key_follows_the_folder_and_its_requirements(tmp_path):
    one, two = folder(tmp_path / "one"), folder(tmp_path / "two")
    assert tool.folder_key(one)[1] == tool.folder_key(two)[1]  # same requirements
    assert tool.folder_key(one)[0] != tool.folder_key(two)[0]  # another folder
    before = tool.folder_key(one)
    folder(one, REQUIREMENTS + "blake3\n")
    assert tool.folder_key(one)[0] == before[0] and tool.folder_key(one)[1] != before[1]


def fake_venv(monkeypatch):
    """tools/host.py's commands, not run: `python -m venv DIR` makes DIR, nothing else happens."""
    def run(cmd, **_kwargs):
        if cmd[1:3] == ["-m", "venv"]:
            Path(cmd[3]).mkdir(parents=True)
    monkeypatch.setattr(tool, "_run", run)


def test_a_staged_build_replaces_only_what_it_names_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    fake_venv(monkeypatch)
    for name in ("a-old", "b-old", "a-half"):  # two finished builds, one unfinished (no READY)
        (tmp_path / name).mkdir()
    for name in ("a-old", "b-old"):
        (tmp_path / name / "READY").write_text("x")
    with tool.staged_venv(tmp_path / "a-new", "key", replaces=lambda old: old.name.startswith("a-")) as (staging, _):
        (staging / "filled").write_text("y")
    assert (tmp_path / "a-new" / "READY").read_text() == "key" and (tmp_path / "a-new" / "filled").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-half", "a-new", "b-old"]

    try:
        with tool.staged_venv(tmp_path / "c-new", "key", replaces=lambda old: True):
            raise RuntimeError("pip failed")
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-half", "a-new", "b-old"]  # nothing built, nothing removed
