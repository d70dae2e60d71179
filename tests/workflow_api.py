"""Turn a UI-format workflow (what ComfyUI saves and the template browser loads) into the API
prompt that /prompt executes, using the server's /object_info for each node's inputs."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_widget_values(spec) -> int:
    """Widgets the frontend stores after an input's own value (seed control, upload button)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))


def _default(spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    return choices[0] if choices else None


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in UI_ONLY_NODES or node.get("mode", 0) in (2, 4):  # muted or bypassed
            continue
        if kind not in object_info:
            raise KeyError(f"workflow node {node['id']} is a {kind!r}, which this ComfyUI does not have")
        info = object_info[kind]["input"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        linked = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                linked[socket["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        inputs, pos = {}, 0
        for name, spec in specs.items():
            if not _is_widget(spec):
                continue
            if pos < len(values):
                inputs[name] = values[pos]
            elif _default(spec) is not None:  # a widget newer than the saved workflow: the frontend
                inputs[name] = _default(spec)  # gives it its default
            pos += 1 + _extra_widget_values(spec)
        inputs.update(linked)
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt
