"""ComfyUI's real frontend in headless Chromium: the pack's extension registers, its nodes
are found by the node search, and after a run the step timeline is drawn on the node.
Screenshots are kept in out/e2e/."""
import json
import re
from pathlib import Path

import pytest
from e2e_browser import Browser
from e2e_models import substitute
from e2e_server import PACK_FOLDER
from e2e_workflows import to_api
from PIL import Image

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
WORKFLOW = WORKFLOWS[0].with_name("flux_accelerate_duca.json")
SAVED = sorted((Path(__file__).resolve().parent / "saved_workflows").glob("*.json"))  # by earlier versions
EXTENSION = "duca.accelerate.timeline"
SETTING = "DuCa.Timeline.Show"
COLORS = {"full": (0x4C, 0x8B, 0xF5), "conservative": (0xF2, 0xA9, 0x3B), "aggressive": (0x43, 0xB5, 0x81)}
FORECAST_COLOR = (0x2F, 0xB5, 0xA3)  # a budget preset's forecast step (web/js/duca_timeline.js)
PANEL_HEIGHT = 54  # web/js/duca_timeline.js: the strip and two lines of figures under the widgets
STEPS = 28

# Console errors of ComfyUI's own frontend on a fresh, offline user folder; they appear
# the same with no custom node installed (the registry lookups, blocked offline, name every
# node on the canvas). Anything else, and anything from the pack's script, fails.
HOST_NOISE = [
    re.compile(r"404 \(Not Found\) \S+/(api/userdata/)?user\.css$"),
    re.compile(r"404 \(Not Found\) \S+/favicon\.ico$"),
    re.compile(r"404 \(Not Found\) \S+/api/userdata\?dir=(workflows|subgraphs)"),
    re.compile(r"404 \(Not Found\) \S+/api/userdata/comfy\.templates\.json$"),
    re.compile(r"^log: Connecting to 'https://api\.comfy\.org/.*Content Security Policy", re.DOTALL),
    # the settings store dispatches a change for a setting with no definition while the graph view loads
    re.compile(r"^console\.error: TypeError: Cannot read properties of undefined \(reading 'id'\)\s+"
               r"at onChange \S+\s+at Proxy\.set .*at load \(\S+/GraphView-", re.DOTALL),
    # opening any subgraph
    re.compile(r"^console\.error: Attempted to cleanup event listeners for graph that was never set up$"),
    # newer frontends (1.49): logged with no custom node installed, and the default workflow's model links
    re.compile(r"^console\.error: ComfyApp graph accessed before initialization"),
    re.compile(r"^log: .*https://huggingface\.co/.*Content Security Policy", re.DOTALL),
]


@pytest.fixture(scope="module")
def page(comfy, tmp_path_factory, artifacts):
    status, _ = comfy.request("POST", "/settings/Comfy.TutorialCompleted", True)  # no template dialog
    assert status == 200
    browser = Browser(tmp_path_factory.mktemp("chromium_profile")).start()
    try:
        browser.navigate(comfy.url)
        browser.wait_for("!!(window.app?.graph && window.app?.extensionManager?.setting && window.app?.canvas)", 120)
        yield browser
    finally:
        browser.stop()
        (artifacts / "browser_console.txt").write_text("\n".join(browser.errors))


def colour_pixels(image: Image.Image, box) -> dict:
    """How many pixels of each action's colour lie in `box` (left, top, right, bottom)."""
    region = image.convert("RGB").crop(tuple(round(v) for v in box))
    counts = dict.fromkeys(COLORS, 0)
    wanted = {rgb: action for action, rgb in COLORS.items()}
    for count, rgb in region.getcolors(maxcolors=1 << 20):
        if rgb in wanted:
            counts[wanted[rgb]] += count
    return counts


def node_box(page, node_id: int) -> dict:
    """The node's body on the screen, in CSS pixels."""
    return page.evaluate(f"""(() => {{
        const node = app.graph.getNodeById({node_id}), ds = app.canvas.ds;
        const rect = app.canvas.canvas.getBoundingClientRect();
        return {{x: rect.left + (node.pos[0] + ds.offset[0]) * ds.scale,
                 y: rect.top + (node.pos[1] + ds.offset[1]) * ds.scale,
                 width: node.size[0] * ds.scale, height: node.size[1] * ds.scale, scale: ds.scale}};
    }})()""")


def redraw(page) -> None:
    page.evaluate("app.graph.setDirtyCanvas(true, true), app.canvas.draw(true, true), true")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")


def queue_from_the_page(page, prompt: dict) -> dict:
    """Queue through the frontend's own API client, with the graph on the canvas as the workflow."""
    return page.evaluate(f"""app.graphToPrompt().then(p =>
        window.comfyAPI.api.api.queuePrompt(0, {{output: {json.dumps(prompt)}, workflow: p.workflow}}))""")


def test_extension_is_served_and_registers(comfy, page):
    assert f"/extensions/{PACK_FOLDER}/duca_timeline.js" in comfy.get("/extensions")
    names = page.evaluate("app.extensions.map(e => e.name)")
    assert EXTENSION in names
    assert page.evaluate(f"app.extensionManager.setting.get('{SETTING}')") is True
    registered = page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert {"DuCaAccelerateV2", "DuCaAccelerateOptions", "DuCaDeepCache"} <= set(registered)


def test_node_search_finds_the_pack_nodes(page, artifacts):
    page.evaluate("app.graph.clear(), true")
    size = page.evaluate("[innerWidth, innerHeight]")
    page.click(size[0] / 2, size[1] / 2, count=1)
    page.click(size[0] / 2, size[1] / 2, count=2)  # a double click on the empty canvas opens the search
    page.wait_for("document.activeElement?.tagName === 'INPUT'", 15)
    page.type_text("DuCa")
    found = page.wait_for("""(() => {
        const texts = [...document.querySelectorAll('[role=option]')].map(e => e.innerText);
        return texts.some(t => t.includes('Accelerate (DuCa)')) && texts.some(t => t.includes('DeepCache (U-Net)'))
            && texts; })()""", 20)
    page.screenshot(artifacts / "node_search.png")
    assert any("DuCa Accelerate" in text for text in found), f"the category is not shown: {found}"
    assert not any("13 inputs" in text for text in found), f"the deprecated node is offered: {found}"
    # Enter adds the highlighted result, as a user would
    page.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")
    page.send("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    added = page.wait_for("app.graph.nodes.map(n => n.type)", 15)
    assert len(added) == 1 and added[0].startswith("DuCa") and added[0] != "DuCaAccelerate", added


def test_timeline_is_drawn_on_the_node_after_a_run(comfy, page, object_info, artifacts):
    workflow = json.loads(WORKFLOW.read_text())
    assert page.evaluate(f"app.loadGraphData({json.dumps(workflow)}).then(() => app.graph.nodes.length)") \
        == len(workflow["nodes"])
    # the frontend's own API-format prompt; the same as the tests' conversion of the file
    from_page = page.evaluate("app.graphToPrompt().then(p => p.output)")
    bare = {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in from_page.items()}
    assert bare == to_api(workflow, object_info)
    prompt = substitute(from_page, salt=31, steps=STEPS)
    node_id = next(int(k) for k, n in prompt.items() if n["class_type"] == "DuCaAccelerateV2")
    prompt[str(node_id)]["inputs"]["preset"] = "duca balanced"  # DuCa's cycle: all three colours
    assert not page.evaluate(f"!!app.graph.getNodeById({node_id}).ducaStats")
    queued = queue_from_the_page(page, prompt)
    comfy.wait(queued["prompt_id"], timeout=240)
    stats = page.wait_for(f"app.graph.getNodeById({node_id}).ducaStats", 30)
    assert stats["num_steps"] == STEPS and len(stats["steps"]) == STEPS
    actions = {step["action"] for step in stats["steps"]}
    assert actions == set(COLORS), actions

    page.evaluate(f"""(() => {{ const node = app.graph.getNodeById({node_id});
        app.canvas.ds.scale = 1.25; app.canvas.ds.offset = [90 - node.pos[0], 150 - node.pos[1]]; return true; }})()""")
    redraw(page)
    box = node_box(page, node_id)
    shot = page.screenshot(artifacts / "after_run.png")
    image = Image.open(shot)
    panel_top = box["y"] + box["height"] - PANEL_HEIGHT * box["scale"]
    panel = colour_pixels(image, (box["x"], panel_top, box["x"] + box["width"], box["y"] + box["height"]))
    above = colour_pixels(image, (box["x"], box["y"], box["x"] + box["width"], panel_top))
    cell_area = (box["width"] / STEPS) * 8 * box["scale"]  # at least 8 of the strip's 12 rows per cell
    counts = {a: sum(s["action"] == a for s in stats["steps"]) for a in COLORS}
    for action, pixels in panel.items():
        assert pixels >= counts[action] * cell_area * 0.5, (action, pixels, counts)
    assert sum(above.values()) < 0.02 * sum(panel.values()), f"timeline colours outside the panel: {above}"
    margin = 30
    page.screenshot(artifacts / "node_timeline.png",
                    clip={"x": box["x"] - margin, "y": box["y"] - 30 * box["scale"] - margin,
                          "width": box["width"] + 2 * margin, "height": box["height"] + 30 * box["scale"] + 2 * margin})


def test_setting_hides_the_timeline(page, artifacts):
    node_id = page.evaluate("app.graph.nodes.find(n => n.type === 'DuCaAccelerateV2').id")
    assert page.evaluate(f"!!app.graph.getNodeById({node_id}).ducaStats"), "needs the run of the test above"
    try:
        page.evaluate(f"app.extensionManager.setting.set('{SETTING}', false).then(() => true)")
        redraw(page)
        box = node_box(page, node_id)
        image = Image.open(page.screenshot(artifacts / "timeline_hidden.png"))
        hidden = colour_pixels(image, (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
        assert sum(hidden.values()) == 0, hidden
    finally:
        page.evaluate(f"app.extensionManager.setting.set('{SETTING}', true).then(() => true)")
    redraw(page)
    box = node_box(page, node_id)
    shown = colour_pixels(Image.open(page.screenshot(artifacts / "timeline_shown.png")),
                          (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    assert all(shown.values()), shown


def test_a_budget_presets_forecast_steps_are_drawn_in_their_own_colour(comfy, page, artifacts):
    node_id = page.evaluate("app.graph.nodes.find(n => n.type === 'DuCaAccelerateV2').id")
    prompt = substitute(page.evaluate("app.graphToPrompt().then(p => p.output)"), salt=37, steps=STEPS)
    prompt[str(node_id)]["inputs"]["preset"] = "balanced"
    comfy.wait(queue_from_the_page(page, prompt)["prompt_id"], timeout=240)
    stats = page.wait_for(f"(s => s && s.method.startsWith('forecast') && s)(app.graph.getNodeById({node_id}).ducaStats)", 30)
    forecast = sum(step["action"] == "forecast" for step in stats["steps"])
    assert {step["action"] for step in stats["steps"]} == {"full", "forecast"} and forecast > STEPS // 2
    redraw(page)
    box = node_box(page, node_id)
    region = Image.open(page.screenshot(artifacts / "forecast_timeline.png")).convert("RGB").crop(
        tuple(round(v) for v in (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])))
    teal = sum(count for count, rgb in region.getcolors(maxcolors=1 << 20) if rgb == FORECAST_COLOR)
    assert teal >= forecast * (box["width"] / STEPS) * 8 * box["scale"] * 0.5, (teal, forecast)


def test_stats_reach_a_node_inside_a_subgraph(comfy, page, artifacts):
    """Inside a subgraph the server names the node by its path ("13:4"): the stats must land
    on that inner node, not on a node of the root graph with the inner id."""
    page.evaluate(f"app.loadGraphData({WORKFLOW.read_text()}).then(() => true)")
    page.evaluate("""(async () => { const node = app.graph.nodes.find(n => n.type === 'DuCaAccelerateV2');
        app.canvas.deselectAll(); app.canvas.select(node);
        await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph'); return true; })()""")
    prompt = substitute(page.evaluate("app.graphToPrompt().then(p => p.output)"), salt=41, steps=8)
    path = next(k for k, n in prompt.items() if n["class_type"] == "DuCaAccelerateV2")
    outer, inner = (int(part) for part in path.split(":"))
    comfy.wait(queue_from_the_page(page, prompt)["prompt_id"], timeout=240)
    stats = page.wait_for(f"app.graph.getNodeById({outer}).subgraph.getNodeById({inner}).ducaStats", 30)
    assert len(stats["steps"]) == 8
    assert not page.evaluate("app.graph.nodes.some(n => n.ducaStats)"), "stats landed on a root node"
    page.evaluate(f"(node => (app.canvas.openSubgraph(node.subgraph, node), true))(app.graph.getNodeById({outer}))")
    redraw(page)
    page.screenshot(artifacts / "subgraph_timeline.png")


@pytest.mark.parametrize("path", WORKFLOWS + SAVED, ids=[p.stem for p in WORKFLOWS + SAVED])
def test_frontend_loads_the_workflow_as_the_file_says(path, page, object_info):
    workflow = json.loads(path.read_text())
    loaded = page.evaluate(f"""app.loadGraphData({json.dumps(workflow)}).then(() => app.graph.nodes.map(n =>
        [n.id, n.type, n.type in LiteGraph.registered_node_types]))""")
    # node ids as the file has them (newer frontends hand them back as strings)
    assert sorted(str(node_id) for node_id, _, _ in loaded) == sorted(str(n["id"]) for n in workflow["nodes"])
    assert all(known for _, _, known in loaded), [t for _, t, known in loaded if not known]
    from_page = page.evaluate("app.graphToPrompt().then(p => p.output)")
    bare = {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in from_page.items()}
    assert bare == to_api(workflow, object_info)


def test_template_browser_shows_every_workflow_with_its_thumbnail(comfy, page, artifacts):
    page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates').then(() => true)")
    page.wait_for(f"""(() => {{ const entry = [...document.querySelectorAll('div')].find(e =>
        e.children.length <= 2 && e.innerText?.trim() === '{PACK_FOLDER}' && e.className.includes('cursor-pointer'));
        return entry && (entry.click(), true); }})()""", 30)
    names = [p.stem for p in WORKFLOWS]
    # each card: its title and its thumbnail (fetched from the pack's workflows/ folder, shown as a blob)
    cards = page.wait_for(f"""(() => {{ const dialog = document.querySelector('[role=dialog]');
        const text = dialog?.innerText ?? '', images = [...(dialog?.querySelectorAll('img') ?? [])];
        return {json.dumps(names)}.every(n => text.includes(n)) && images.length >= {len(names)}
            && images.every(i => i.complete && i.naturalWidth > 0) && images.length; }})()""", 30)
    page.screenshot(artifacts / "template_browser.png")
    assert cards == len(names)
    for name in names:
        status, _ = comfy.request("GET", f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")
        assert status == 200, name
    # close it with its top-right button, as a user would
    page.evaluate("""(() => { const buttons = [...document.querySelector('[role=dialog]').querySelectorAll('button')];
        const corner = b => { const r = b.getBoundingClientRect(); return r.right - r.top; };
        buttons.reduce((a, b) => corner(b) > corner(a) ? b : a).click(); return true; })()""")
    page.wait_for("!document.querySelector('[role=dialog]')", 15)


def test_no_errors_in_the_browser_console(page):
    page.evaluate("new Promise(r => setTimeout(() => r(true), 500))")
    unexpected = [e for e in page.errors if not any(p.search(e) for p in HOST_NOISE)]
    assert not unexpected, "\n\n".join(unexpected)
    assert not [e for e in page.errors if f"/extensions/{PACK_FOLDER}/" in e]
