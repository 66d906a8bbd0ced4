"""Convert between ComfyUI's API-format graphs and the UI-format workflows the frontend
(and its template browser) opens. Both directions walk a node's inputs in the order its
definition gives, which is the order of `widgets_values` in a UI workflow."""
import nodes

# Frontend widgets that add an extra value after their own in widgets_values.
_SEED_NAMES = ("seed", "noise_seed")
_WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
_SKIPPED_UI_NODES = ("Note", "MarkdownNote")


def input_specs(class_type: str):
    """[(name, type, options, required)] in definition order."""
    if class_type not in nodes.NODE_CLASS_MAPPINGS:
        raise KeyError(f"unknown node type {class_type!r} (is its pack loaded?)")
    spec = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, "COMBO" if isinstance(typ, list) else typ, opts, section == "required"))
    return out


def output_types(class_type: str):
    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def is_widget(typ) -> bool:
    return typ in _WIDGET_TYPES


def extra_widget_values(name, typ, opts) -> list:
    extra = []
    if typ == "INT" and (opts.get("control_after_generate") or name in _SEED_NAMES):
        extra.append("fixed")
    if opts.get("image_upload"):
        extra.append("image")
    return extra


def api_to_ui(prompt: dict) -> dict:
    """API-format graph -> UI workflow (version 0.4); node positions and sizes are left for
    workflow_layout.apply_layout to set."""
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for order, (key, node) in enumerate(prompt.items()):
        ct = node["class_type"]
        inputs, widgets = [], []
        for name, typ, opts, _required in input_specs(ct):
            value = node["inputs"].get(name)
            entry = {"name": name, "type": typ if isinstance(typ, str) else "COMBO", "link": None}
            if isinstance(value, list):  # a link [from_node, slot]
                link_id = len(links) + 1
                src = ids[value[0]]
                out_type = output_types(prompt[value[0]]["class_type"])[value[1]][1]
                links.append([link_id, src, value[1], ids[key], len(inputs), out_type])
                outgoing.setdefault((src, value[1]), []).append(link_id)
                entry["link"] = link_id
                value = opts.get("default")
            if is_widget(typ):
                entry["widget"] = {"name": name}
                widgets.append(value if value is not None else opts.get("default"))
                widgets.extend(extra_widget_values(name, typ, opts))
            inputs.append(entry)
        ui_nodes.append({
            "id": ids[key], "type": ct, "pos": [0, 0], "size": [0, 0],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": n, "type": t, "links": []} for n, t in output_types(ct)],
            "properties": {"Node name for S&R": ct}, "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    for n in ui_nodes:
        for slot, out in enumerate(n["outputs"]):
            out["links"] = outgoing.get((n["id"], slot), [])
    return {"last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(workflow: dict) -> dict:
    """UI workflow -> API-format graph, as the frontend's "queue prompt" would send it."""
    link_src = {l[0]: (str(l[1]), l[2]) for l in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in _SKIPPED_UI_NODES:
            continue
        if n.get("mode", 0) != 0:
            raise ValueError(f"node {n['id']} ({n['type']}) is muted or bypassed; example workflows must not be")
        linked = {i["name"]: link_src[i["link"]] for i in n.get("inputs", []) if i.get("link") is not None}
        values = list(n.get("widgets_values") or [])
        inputs = {}
        for name, typ, opts, _required in input_specs(n["type"]):
            if is_widget(typ):
                if not values:
                    raise ValueError(f"node {n['id']} ({n['type']}): no widget value for {name!r}")
                inputs[name] = values.pop(0)
                del values[: len(extra_widget_values(name, typ, opts))]
            if name in linked:
                inputs[name] = list(linked[name])
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt
