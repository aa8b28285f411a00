"""Every example workflow, as a user gets it: listed by the real server's template
browser, converted to API format, run to success on small models; workflows saved by
earlier versions of the pack still load with the same values and run; malformed graphs
are rejected by the host's validation while the server stays up."""
import json
import zlib
from pathlib import Path

import pytest
from e2e_models import substitute
from e2e_server import PACK_FOLDER
from e2e_workflows import output_nodes, to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
# As users saved them with earlier versions of the pack (UI format: widget values by position).
SAVED = sorted((Path(__file__).resolve().parent / "saved_workflows").glob("*.json"))
SHORT_RUN = 8  # sampler steps on the CPU: enough for full, conservative and aggressive steps (FFFCACFC)
OUTPUT_KEYS = ("images", "gifs", "videos", "animated", "schedules")  # schedules: Save Cache Schedule


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_workflow_is_listed_and_served_by_the_template_browser(comfy):
    assert WORKFLOWS, "no example workflows found"
    listed = comfy.get("/workflow_templates")
    assert sorted(listed[PACK_FOLDER]) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        served = comfy.get(f"/api/workflow_templates/{PACK_FOLDER}/{path.name}")
        assert served == load(path)
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail for the template browser"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_is_a_ui_graph_that_explains_itself(path, object_info):
    workflow = load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    notes = [n for n in nodes.values() if n["type"] in ("Note", "MarkdownNote")]
    assert notes and len(notes[0]["widgets_values"][0]) > 100, "a note node must explain the workflow"
    assert any(n["type"].startswith("DuCa") for n in nodes.values()), "the workflow must use a pack node"
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= max(l[0] for l in workflow["links"])
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[target]["inputs"][target_slot]["type"] == kind
    for node in nodes.values():
        if node["type"] not in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"):
            assert node["type"] in object_info, f"{path.name}: node {node['type']} is not installed"


@pytest.mark.parametrize("path", WORKFLOWS + SAVED, ids=[p.stem for p in WORKFLOWS + SAVED])
def test_workflow_runs_to_success_in_the_real_server(path, comfy, object_info):
    prompt = substitute(to_api(load(path), object_info), salt=zlib.crc32(path.name.encode()) % 10_000,
                        steps=SHORT_RUN)
    assert any(n["class_type"].startswith("DuCa") for n in prompt.values()), "the pack's node was dropped"
    outputs = output_nodes(prompt, object_info)
    assert outputs, "the workflow saves or previews nothing"
    entry = comfy.wait(comfy.queue(prompt), timeout=240)
    for key in outputs:
        produced = entry["outputs"].get(key, {})
        files = [f for k in OUTPUT_KEYS for f in produced.get(k, [])]
        assert files, f"{path.name}: output node {key} ({prompt[key]['class_type']}) produced nothing"
        for saved in produced.get("schedules", []):  # Load Cache Schedule lists a schedule once it is saved
            listed = comfy.get("/object_info/DuCaLoadSchedule")["DuCaLoadSchedule"]["input"]["required"]
            assert saved["filename"] in listed["schedule_name"][1]["options"]


def test_saved_workflow_keeps_its_widget_values(object_info):
    """The Flux example as saved before the nodes moved to the V3 schema: the server's node
    list still names each widget value as it was meant; a widget added since takes its default."""
    path = next(p for p in SAVED if p.name == "flux_accelerate_duca_v1.json")
    prompt = to_api(load(path), object_info)
    assert prompt["4"] == {"class_type": "DuCaAccelerate", "inputs": {
        "model": ["1", 0], "preset": "balanced", "interval": 4, "refresh_ratio": 0.1, "token_selector": "value_norm",
        "first_full_steps": 3, "start_percent": 0.0, "end_percent": 1.0, "cache_device": "compute",
        "estimator": "auto", "budget": 0.0, "placement": "ends"}}
    spec = object_info["DuCaAccelerate"]
    # a socket, then the widgets added since
    assert spec["input_order"]["optional"][-4:] == ["schedule", "estimator", "budget", "placement"]
    assert spec["input"]["optional"]["schedule"][0] == "DUCA_SCHEDULE"
    assert spec["input"]["required"]["preset"][0] == "COMBO"  # a widget for to_api, as the frontend sees it


def test_a_workflow_saved_with_the_13_input_node_keeps_its_settings(object_info):
    """Saved with every input of the 13-input flagship away from its default (the pack keeps that
    node, deprecated): each value reaches the input it was set on."""
    path = next(p for p in SAVED if p.name == "flux_accelerate_duca_13_inputs.json")
    node = to_api(load(path), object_info)["4"]
    assert node == {"class_type": "DuCaAccelerate", "inputs": {
        "model": ["1", 0], "preset": "fast", "interval": 5, "refresh_ratio": 0.2, "token_selector": "random",
        "first_full_steps": 2, "start_percent": 0.1, "end_percent": 0.9, "cache_device": "cpu",
        "estimator": "taylor2", "budget": 0.3, "placement": "even"}}
    assert object_info["DuCaAccelerate"]["deprecated"] is True


def first_duca_prompt(object_info, node_type="DuCaAccelerateV2", name="flux_accelerate_duca.json") -> tuple:
    path = next(p for p in WORKFLOWS + SAVED if p.name == name)
    prompt = substitute(to_api(load(path), object_info), salt=17, steps=SHORT_RUN)
    key = next(k for k, n in prompt.items() if n["class_type"] == node_type)
    return prompt, key


def assert_rejected(comfy, prompt, node_key, input_name):
    status, body = comfy.request("POST", "/prompt", {"prompt": prompt, "client_id": "e2e"})
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"][node_key]["errors"]
    assert any(e["extra_info"].get("input_name") == input_name for e in errors), errors
    assert comfy.alive() and comfy.get("/system_stats")["system"]


def test_unknown_preset_is_rejected_by_the_hosts_validation(comfy, object_info):
    prompt, key = first_duca_prompt(object_info)
    prompt[key]["inputs"]["preset"] = "nonsense"
    assert_rejected(comfy, prompt, key, "preset")


def test_out_of_range_input_is_rejected_by_the_hosts_validation(comfy, object_info):
    prompt, key = first_duca_prompt(object_info, "DuCaAccelerate", "flux_accelerate_duca_13_inputs.json")
    prompt[key]["inputs"]["refresh_ratio"] = 3.0
    assert_rejected(comfy, prompt, key, "refresh_ratio")


def test_missing_model_is_rejected_and_the_server_keeps_serving(comfy, object_info):
    prompt, _ = first_duca_prompt(object_info)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "UNETLoader")
    prompt[loader]["inputs"]["unet_name"] = "not_downloaded.safetensors"
    assert_rejected(comfy, prompt, loader, "unet_name")
    # the server still runs a graph afterwards (the cheapest example, with a fresh seed)
    path = next(p for p in WORKFLOWS if p.name == "wan_t2v_duca.json")
    good = substitute(to_api(load(path), object_info), salt=23, steps=4)
    assert comfy.wait(comfy.queue(good), timeout=240)["status"]["status_str"] == "success"
