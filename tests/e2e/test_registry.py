"""What the ComfyUI Registry and ComfyUI-Manager read: pyproject.toml, the icon, the
README's images, and node names and categories as the loaded pack declares them."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import tomllib

from testbed import host

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_has_what_the_registry_requires():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["urls"]["Repository"].startswith("https://")
    assert (REPO / project["license"]["file"]).is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"] == "DuCa Accelerate"
    assert isinstance(comfy["includes"], list)
    assert project["dependencies"] == [], "the pack must run on what ComfyUI installs"


def test_icon_is_a_small_svg_in_the_repository():
    icon_url = pyproject()["tool"]["comfy"]["Icon"]
    local = REPO / icon_url.split("/main/", 1)[1]
    root = ET.parse(local).getroot()
    assert root.tag.endswith("svg")
    assert int(root.get("width")) <= 800 and int(root.get("height")) <= 400


def test_readme_shows_the_node_with_its_timeline():
    readme = (REPO / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert "docs/node_timeline.png" in images
    for image in images:
        assert (REPO / image).is_file(), image


def test_every_node_has_a_display_name_and_the_pack_category():
    pack = host.load_pack()
    from comfyui_duca.nodes.base import CATEGORY
    schemas = [node.GET_SCHEMA() for node in host.node_classes().values()]
    names = [schema.display_name for schema in schemas]
    assert len(schemas) == 15 and all(names)
    assert len(set(names)) == len(names), "two nodes share a display name"
    for schema in schemas:
        assert schema.node_id.startswith("DuCa"), schema.node_id
        assert schema.category == CATEGORY or schema.category.startswith(CATEGORY + "/"), schema.node_id
        assert schema.description, f"{schema.node_id} has no description"
    assert pack.WEB_DIRECTORY == "./web/js" and (REPO / "web" / "js" / "duca_timeline.js").is_file()
