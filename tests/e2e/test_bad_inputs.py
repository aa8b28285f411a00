"""Bad inputs through the real server's API.

Every pack node's numeric inputs set just out of their range, and its numbers and choices
given the wrong type, are refused by the host's validation (HTTP 400 from /prompt) with
that node and that input named; a schedule made for one model family, connected to a
model of another, fails its run with both families named; and the server keeps serving.

The (node, input) cases come from the node definitions the server lists (/object_info):
they are read at collection from the same definitions in this process, and a test checks
that the server lists exactly those, so a new input is covered without editing this file.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest
from e2e_models import CONDITIONING, DIFFUSION_FILE, PICTURE, VAE_NAME, VIDEO_FRAMES
from e2e_server import PACK_FOLDER
from e2e_workflows import is_widget, widget_options

from testbed import host

UNDER_TEST = "under_test"  # the graph key of the node whose input is spoiled
SHORT_RUN = 4  # sampler steps of the runs that execute (CPU)
NUMBERS = ("INT", "FLOAT")
# The family names the pack records in a schedule and names in its errors (adapters/registry.py).
FAMILY_NAME = {"sd": "unet", "wan": "wan"}
LATENT_NODE = {
    "sd": {"class_type": "EmptyLatentImage", "inputs": {"width": PICTURE, "height": PICTURE, "batch_size": 1}},
    "wan": {"class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": PICTURE, "height": PICTURE, "length": VIDEO_FRAMES, "batch_size": 1}},
}


# --- the cases, from the node definitions ------------------------------------------------
@dataclass(frozen=True)
class Case:
    node: str
    input: str
    kind: str  # a key of SPOILERS

    @property
    def id(self) -> str:
        return f"{self.node}.{self.input}-{self.kind}"


def float_step(options: dict) -> float:
    return options.get("step") or 0.01


# kind -> (inputs it applies to, the bad value from the input's options, the host's error type).
# None as the error type: the pack's own combo check (a V3 combo's options are checked only by
# the node's validate_inputs), which the host reports as a custom validation failure.
SPOILERS = {
    "below_min": (lambda kind, options: kind in NUMBERS and "min" in options,
                  lambda kind, options: options["min"] - (1 if kind == "INT" else float_step(options)),
                  "value_smaller_than_min"),
    "above_max": (lambda kind, options: kind in NUMBERS and "max" in options,
                  lambda kind, options: options["max"] + (1 if kind == "INT" else float_step(options)),
                  "value_bigger_than_max"),
    "text_for_number": (lambda kind, options: kind in NUMBERS,
                        lambda kind, options: "not a number",
                        "invalid_input_type"),
    "unknown_choice": (lambda kind, options: kind == "COMBO",
                       lambda kind, options: "no such choice",
                       None),
    "number_for_choice": (lambda kind, options: kind == "COMBO",
                          lambda kind, options: 7,
                          None),
    "list_for_choice": (lambda kind, options: kind == "COMBO",
                        lambda kind, options: {"__value__": list(options.get("options", []))[:1]},
                        None),
}


def all_inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def derive_cases(pack_info: dict) -> list:
    """Every (node, input, kind) a spoiler applies to, in a stable order."""
    cases = []
    for node_id in sorted(pack_info):
        for name, spec in all_inputs(pack_info[node_id]).items():
            for kind, (applies, _, _) in SPOILERS.items():
                if applies(spec[0], widget_options(spec)):
                    cases.append(Case(node_id, name, kind))
    return cases


def definitions_in_process() -> dict:
    """What /object_info serves for each pack node (the host calls the same method), as JSON."""
    return {node_id: json.loads(json.dumps(node.GET_NODE_INFO_V1()))
            for node_id, node in host.node_classes().items()}


def pack_nodes_listed_by(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items()
            if info.get("python_module", "").split(".")[-1] == PACK_FOLDER}


CASES = derive_cases(definitions_in_process())


# --- graphs ---------------------------------------------------------------------------------
def sampling_graph(family: str, seed: int = 0) -> dict:
    """Loader -> sampler -> decode -> preview on a small model; the sampler's model is the loader's
    until a pack node is put in front of it."""
    tokens, width, pooled = CONDITIONING[family]

    def conditioning(salt):
        return {"class_type": "E2ETestConditioning",
                "inputs": {"tokens": tokens, "dim": width, "pooled_dim": pooled, "seed": seed + salt}}
    return {
        "loader": {"class_type": "UNETLoader",
                   "inputs": {"unet_name": DIFFUSION_FILE[family], "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME[family]}},
        "positive": conditioning(1),
        "negative": conditioning(2),
        "latent": json.loads(json.dumps(LATENT_NODE[family])),
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "seed": seed, "steps": SHORT_RUN, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def fora_schedule(model_key: str) -> dict:
    return {"class_type": "DuCaFORASchedule",
            "inputs": {"model": [model_key, 0], "steps": SHORT_RUN, "interval": 2, "first_full_steps": 1}}


def valid_value(name: str, spec):
    options = widget_options(spec)
    if "default" in options:
        return options["default"]
    choices = options.get("options") or []
    assert choices, f"{name}: no default and no choices to build a valid graph with"
    return choices[0]


def graph_around(node_id: str, info: dict, family: str = "sd", seed: int = 0) -> dict:
    """A graph that is valid as a whole, with the node `node_id` (defaults for its widgets) at
    UNDER_TEST: fed by the shared loader, conditioning and latent (and a FORA schedule where it
    needs one), and feeding the sampler (directly, through Apply Cache Schedule or Accelerate (DuCa)),
    or an output itself."""
    graph = sampling_graph(family, seed)
    inputs = {}
    for name, spec in all_inputs(info).items():
        required = name in info["input"].get("required", {})
        if is_widget(spec):
            inputs[name] = valid_value(name, spec)
        elif not required:
            continue  # an optional socket (Accelerate's schedule): left unconnected
        elif spec[0] == "MODEL":
            inputs[name] = ["loader", 0]
        elif spec[0] == "CONDITIONING":
            inputs[name] = [name, 0]  # positive / negative
        elif spec[0] == "LATENT":
            inputs[name] = ["latent", 0]
        elif spec[0] == "DUCA_SCHEDULE":
            graph["schedule"] = fora_schedule("loader")
            inputs[name] = ["schedule", 0]
        else:
            raise AssertionError(f"{node_id}.{name}: no source for a {spec[0]} input; add one to graph_around")
    graph[UNDER_TEST] = {"class_type": node_id, "inputs": inputs}
    outputs = info["output"]
    if "MODEL" in outputs:
        graph["sampler"]["inputs"]["model"] = [UNDER_TEST, outputs.index("MODEL")]
    elif "DUCA_ACCELERATE_OPTIONS" in outputs:
        graph["accelerate"] = {"class_type": "DuCaAccelerateV2", "inputs": {
            "model": ["loader", 0], "preset": "balanced", "options": [UNDER_TEST, 0]}}
        graph["sampler"]["inputs"]["model"] = ["accelerate", 0]
    elif "DUCA_SCHEDULE" in outputs:
        graph["apply"] = {"class_type": "DuCaApplySchedule", "inputs": {
            "model": ["loader", 0], "schedule": [UNDER_TEST, outputs.index("DUCA_SCHEDULE")]}}
        graph["sampler"]["inputs"]["model"] = ["apply", 0]
    else:
        assert info.get("output_node"), f"{node_id}: no output this graph can use; extend graph_around"
        # Its own output only: with the preview beside it, the host would run the valid rest.
        return reachable(graph, UNDER_TEST)
    return graph


def reachable(graph: dict, output: str) -> dict:
    """The part of `graph` that `output` reads from."""
    kept, todo = {}, [output]
    while todo:
        key = todo.pop()
        if key not in kept:
            kept[key] = graph[key]
            todo += [value[0] for value in graph[key]["inputs"].values() if isinstance(value, list)]
    return kept


# --- the server's answers -------------------------------------------------------------------
def validation_errors(comfy, prompt: dict, node_key: str, class_type: str) -> list:
    """The errors the host's validation gives `node_key`, the only node it may find fault with."""
    status, body = comfy.request("POST", "/prompt", {"prompt": prompt, "client_id": "e2e-bad-inputs"})
    assert status == 400, f"accepted (HTTP {status}): {body}"
    assert body["error"]["type"] == "prompt_outputs_failed_validation", body["error"]
    # Only the spoiled node: the rest of the graph around it is valid.
    assert set(body["node_errors"]) == {node_key}, body["node_errors"]
    assert body["node_errors"][node_key]["class_type"] == class_type
    return body["node_errors"][node_key]["errors"]


def execution_error(comfy, prompt_id: str, timeout: float = 180) -> dict:
    """The execution_error the server reports for a run that is expected to fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = comfy.get(f"/history/{prompt_id}").get(prompt_id)
        if entry:
            status = entry["status"]
            assert status["status_str"] == "error", f"the run did not fail: {json.dumps(status)[:2000]}"
            errors = [body for kind, body in status["messages"] if kind == "execution_error"]
            assert len(errors) == 1, status["messages"]
            return errors[0]
        assert comfy.alive(), f"ComfyUI died during the run:\n{comfy.log_tail()}"
        time.sleep(0.3)
    raise TimeoutError(f"run {prompt_id} unfinished after {timeout}s")


def names_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.fixture(scope="session")
def saved_wan_schedule(comfy) -> str:
    """A FORA schedule of the Wan test model, saved by Save Cache Schedule: Load Cache Schedule lists
    only saved files, so its graphs need one."""
    prompt = {"loader": sampling_graph("wan")["loader"], "fora": fora_schedule("loader"),
              "save": {"class_type": "DuCaSaveSchedule",
                       "inputs": {"schedule": ["fora", 0], "filename_prefix": "e2e_mismatch", "format": "json"}}}
    entry = comfy.wait(comfy.queue(prompt), timeout=180)
    return entry["outputs"]["save"]["schedules"][0]["filename"]


# --- 1. out of range and wrong types --------------------------------------------------------
def test_the_cases_are_what_the_server_lists_and_cover_every_pack_node(object_info):
    listed = pack_nodes_listed_by(object_info)
    assert sorted(listed) == sorted(host.node_classes()), "the server lists other pack nodes than the pack has"
    assert CASES, "no case derived from the node definitions"
    assert derive_cases(listed) == CASES, "the server lists other inputs or ranges than the collected cases"
    checked = {name for name, info in listed.items()
               if any(spec[0] in (*NUMBERS, "COMBO") for spec in all_inputs(info).values())}
    assert {case.node for case in CASES} == checked
    for kind in SPOILERS:
        assert any(case.kind == kind for case in CASES), f"no input to try {kind} on"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_rejected_by_the_hosts_validation_naming_node_and_input(case, comfy, saved_wan_schedule):
    info = comfy.get(f"/object_info/{case.node}")[case.node]  # fresh: Load Cache Schedule's files
    spec = all_inputs(info)[case.input]
    _, spoil, error_type = SPOILERS[case.kind]
    bad = spoil(spec[0], widget_options(spec))
    prompt = graph_around(case.node, info)
    prompt[UNDER_TEST]["inputs"][case.input] = bad

    errors = validation_errors(comfy, prompt, UNDER_TEST, case.node)
    named = [e for e in errors if e["extra_info"].get("input_name") == case.input]
    assert named, errors
    if error_type is not None:  # the host's own check: exactly this one error
        assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [(error_type, case.input)], errors
        if case.kind != "text_for_number":
            assert errors[0]["extra_info"]["received_value"] == bad
    else:  # the pack's combo check: its reason names the input and the value it got
        value = bad["__value__"] if isinstance(bad, dict) else bad
        assert any(f"{case.input}: {value!r}" in e["details"] for e in named), errors
        assert all(e["type"] == "custom_validation_failed" for e in errors), errors


# --- 2. a schedule of another family --------------------------------------------------------
def schedule_made_in_the_graph() -> tuple:
    """A FORA schedule of the SD U-Net applied by Apply Cache Schedule to the Wan model."""
    graph = sampling_graph("wan", seed=31)
    graph["other_loader"] = sampling_graph("sd")["loader"]
    graph["schedule"] = fora_schedule("other_loader")
    graph["consumer"] = {"class_type": "DuCaApplySchedule",
                         "inputs": {"model": ["loader", 0], "schedule": ["schedule", 0]}}
    graph["sampler"]["inputs"]["model"] = ["consumer", 0]
    return graph, "sd", "wan"


def schedule_loaded_from_a_file(saved: str) -> tuple:
    """A saved Wan schedule, loaded by Load Cache Schedule, on Accelerate (DuCa)'s schedule input
    with the SD U-Net."""
    graph = sampling_graph("sd", seed=37)
    graph["schedule"] = {"class_type": "DuCaLoadSchedule", "inputs": {"schedule_name": saved}}
    graph["consumer"] = {"class_type": "DuCaAccelerate",
                         "inputs": {"model": ["loader", 0], "preset": "balanced", "schedule": ["schedule", 0]}}
    graph["sampler"]["inputs"]["model"] = ["consumer", 0]
    return graph, "wan", "sd"


@pytest.mark.parametrize("source", ["made_in_the_graph", "loaded_from_a_file"])
def test_schedule_of_another_family_is_refused_naming_both_families(source, comfy, saved_wan_schedule):
    if source == "made_in_the_graph":
        prompt, schedule_family, model_family = schedule_made_in_the_graph()
    else:
        prompt, schedule_family, model_family = schedule_loaded_from_a_file(saved_wan_schedule)
    error = execution_error(comfy, comfy.queue(prompt))  # the host's validation can't know families
    assert (error["node_id"], error["node_type"]) == ("consumer", prompt["consumer"]["class_type"]), error
    message = error["exception_message"]
    for family in (schedule_family, model_family):
        assert names_word(message, FAMILY_NAME[family]), f"{FAMILY_NAME[family]!r} not named: {message}"
    assert comfy.alive()


# --- 3. still serving -----------------------------------------------------------------------
def test_the_server_keeps_serving_after_bad_inputs(comfy, object_info):
    info = comfy.get("/object_info")
    assert sorted(pack_nodes_listed_by(info)) == sorted(pack_nodes_listed_by(object_info))
    # One more refusal right before, so this holds when the test runs alone too.
    bad = graph_around("DuCaAccelerate", info["DuCaAccelerate"])
    bad[UNDER_TEST]["inputs"]["interval"] = 0
    validation_errors(comfy, bad, UNDER_TEST, "DuCaAccelerate")

    good = graph_around("DuCaAccelerate", info["DuCaAccelerate"], seed=41)
    entry = comfy.wait(comfy.queue(good), timeout=240)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["preview"]["images"], "the run previewed nothing"
    assert comfy.get("/system_stats")["system"]
