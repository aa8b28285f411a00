"""Convert a UI-format workflow (what ComfyUI's frontend saves) to the API format that
`/prompt` takes, using the server's `/object_info` to name each widget value."""
from __future__ import annotations

VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # frontend-only nodes
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def has_seed_control(name: str, spec) -> bool:
    """The frontend adds a 'control after generate' value after seed widgets."""
    options = widget_options(spec)
    return spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))


def to_api(workflow: dict, object_info: dict) -> dict:
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: (link[1], link[2]) for link in workflow["links"]}

    def source(link_id):
        """Follow a link back through reroutes and bypassed nodes to the real output."""
        origin, slot = links[link_id]
        node = nodes[origin]
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            out_type = node["outputs"][slot]["type"]
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp["type"] == out_type):
                    return source(inp["link"])
            return None
        if node["type"] == "PrimitiveNode":
            return ("value", node["widgets_values"][0])
        return [str(origin), slot]

    prompt = {}
    for node_id, node in nodes.items():
        if node["type"] in VIRTUAL or node.get("mode") in (MUTED, BYPASSED):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']!r} (node {node_id}) is not installed")
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", [])
        linked = {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in names:
            spec = specs[name]
            if is_widget(spec):
                if values:
                    inputs[name] = values.pop(0)
                elif "default" in widget_options(spec):  # a widget added after the file was saved
                    inputs[name] = widget_options(spec)["default"]
                if has_seed_control(name, spec) and values:
                    values.pop(0)
            if name in linked:
                origin = source(linked[name])
                if isinstance(origin, tuple):
                    inputs[name] = origin[1]
                elif origin is not None:
                    inputs[name] = origin
        prompt[str(node_id)] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def output_nodes(prompt: dict, object_info: dict) -> list:
    return [key for key, node in prompt.items() if object_info[node["class_type"]].get("output_node")]
