"""Each example workflow in the real frontend: app.loadGraphData, app.graphToPrompt (must give
exactly its API twin), then queued from the page and its result checked."""
from __future__ import annotations

import json
import time

import browser
import harness
import pytest
from test_host import expect_close


@pytest.fixture(scope="module")
def front(server):
    why = browser.available()
    if why:
        pytest.skip(why)
    f = browser.Frontend(server)
    yield f
    f.close()


def _strip(prompt: dict) -> dict:
    """Class and inputs, less PreviewAny's display-only 'preview' widget (frontend 1.27 sends
    it, 1.58 does not; it is core's, not ours)."""
    def inputs(v):
        return {k: x for k, x in v["inputs"].items() if not (v["class_type"] == "PreviewAny" and k == "preview")}

    return {k: {"class_type": v["class_type"], "inputs": inputs(v)} for k, v in prompt.items()}


def _queue_from_page(front, server, timeout=300) -> dict:
    before = set(server.get("/history?max_items=1000"))
    front.queue()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {k: v for k, v in server.get("/history?max_items=1000").items() if k not in before}
        if new:
            return next(iter(new.values()))
        time.sleep(0.25)
    raise TimeoutError("the prompt queued from the page never finished")


@pytest.mark.parametrize("name", harness.example_names())
def test_example_workflow_in_frontend(front, server, name, input_image, bundled):
    workflow = json.loads(server.get(f"/api/workflow_templates/{harness.PACKAGE_DIR_NAME}/{name}.json", raw=True))
    front.reload()
    front.load_ui(workflow)
    prompt = front.graph_to_prompt()
    assert _strip(prompt) == _strip(harness.load_api(name)), "the frontend's API form differs from the twin"
    assert not front.serious_errors(), front.serious_errors()
    if harness.needs_checkpoint(prompt):
        # no diffusion checkpoint on the test host: load + conversion, and the template explains itself
        nodes = front.graph()["nodes"]
        loader = next(n for n in nodes if n["type"] == "CheckpointLoaderSimple")
        assert loader["properties"]["models"][0]["directory"] == "checkpoints"  # the frontend can offer it
        assert any(n["type"] == "Note" and "SD1.5 checkpoint" in n["widgets_values"][0] for n in nodes)
        assert all(n["widgets_values"][1] == "fixed" for n in nodes if n["type"] == "KSampler")
        # the frontend's missing-model dialog names the checkpoint (and offers its download)
        front.page.wait_for_selector("text=v1-5-pruned-emaonly-fp16.safetensors", timeout=10_000)
        return

    entry = _queue_from_page(front, server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    if harness.nodes_of(prompt, "SaveVideo"):  # the video example: its own test checks the frames (test_video_host.py)
        import av

        (saved,) = entry["outputs"][harness.nodes_of(prompt, "SaveVideo")[0]]["images"]
        with av.open(str(server.base / "output" / saved["subfolder"] / saved["filename"])) as c:
            assert (c.streams.video[0].height, c.streams.video[0].width) == (288, 384) and len(c.streams.audio) == 1
            assert sum(1 for _ in c.decode(video=0)) == 48
        assert any(n["type"] == "Note" and "sample.mp4" in n["widgets_values"][0] for n in front.graph()["nodes"])
        return
    (got,) = server.output_images(entry, harness.nodes_of(prompt, "SaveImage")[0])
    x4 = bundled("RealESRGAN_x4plus")
    if name == "hires_fix_image":
        assert got.shape == (40, 48, 3)
        expect_close(got, harness.cpu_upscale(x4, input_image, output_size=(40, 48))[0])
        report = server.output_text(entry, harness.nodes_of(prompt, "PreviewAny")[0])
        assert report.startswith("model RealESRGAN_x4plus: 32x24 -> 48x40"), report
    elif name == "core_upscale_with_model":
        assert got.shape == (96, 128, 3)
        expect_close(got, harness.cpu_upscale(x4, input_image)[0], min_psnr=40.0, max_abs=8)
    else:
        assert got.shape == (96, 128, 3)
        expect_close(got, harness.cpu_upscale(x4, input_image)[0])


@pytest.mark.parametrize("node_id", ["RealESRGAN_LoadUpscaleModel", "RealESRGAN_UpscaleImageTiled",
                                     "RealESRGAN_HiresFixUpscale", "RealESRGAN_InterpolateUpscaleModels"])
def test_help_page_shows_in_the_frontend(front, node_id):
    """The node library's help button shows our web/docs/<node id>.md, rendered."""
    source = (harness.REPO / "web" / "docs" / f"{node_id}.md").read_text()
    title = source.splitlines()[0].lstrip("# ").strip()
    def plain(markdown: str) -> str:  # what the rendered page shows, give or take emphasis marks
        return " ".join(markdown.replace("`", "").replace("*", "").split())

    opening = plain(source.split("\n\n")[1])[:80]
    front.reload()
    shown = front.node_help(title)
    if shown is None:
        pytest.skip("this frontend's node library has no help button (its node docs are reached elsewhere)")
    text = plain(shown)
    assert opening in text, (opening, text[:800])
    assert not front.serious_errors(), front.serious_errors()
