"""The real ComfyUI frontend in headless Debian chromium, through PyPI playwright (never
playwright's own browser download)."""
from __future__ import annotations

import os
import shutil
import tempfile

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NODE_IDS = ("RealESRGAN_LoadUpscaleModel", "RealESRGAN_UpscaleImageTiled", "RealESRGAN_HiresFixUpscale")
# known noise; "Error fetching file size": the missing-model dialog asks the checkpoint's download
# host (the URL a workflow's properties.models carries) for its size, and this machine is offline
HARMLESS = ("user.css", "userdata", "Failed to load resource", "api.comfy.org", "ERR_NAME_NOT_RESOLVED",
            "ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION_REFUSED", "settings", "Error fetching file size")


def available() -> str | None:
    """None when a browser test can run, else why not."""
    if not os.path.exists(CHROMIUM):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "PyPI playwright is not installed"
    return None


class Frontend:
    """One page of the ComfyUI frontend served by ``server`` (a harness.ComfyServer)."""

    def __init__(self, server, viewport=(1280, 800)):
        from playwright.sync_api import sync_playwright

        self.server = server
        server.request("/api/settings/Comfy.TutorialCompleted", True)  # no "Get Started" dialog
        server.request("/api/settings/Comfy.Minimap.Visible", False)
        self.profile = tempfile.mkdtemp(prefix="rt_chromium_")
        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.errors: list[str] = []
        self.baseline: set[str] = set()
        self._mark = 0
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.reload()

    def reload(self) -> None:
        """A fresh page: no state (node previews, open tabs) left from an earlier workflow."""
        self.page.goto(self.server.url, wait_until="domcontentloaded", timeout=120_000)
        ids = ",".join(f"'{n}'" for n in NODE_IDS)
        self.page.wait_for_function(
            f"() => window.app && window.app.graph && window.LiteGraph && "
            f"[{ids}].every(n => n in window.LiteGraph.registered_node_types)", timeout=120_000)
        self.page.wait_for_timeout(1000)
        self.baseline = set(self.errors)
        self._mark = len(self.errors)

    def serious_errors(self) -> list[str]:
        """Console errors other than the known harmless noise (404s for user.css/userdata, the
        Comfy API host lookup, settings) and other than those the bare page already showed
        after its last reload (frontend noise that no workflow caused)."""
        return [e for e in self.errors[self._mark:] if not any(h in e for h in HARMLESS) and e not in self.baseline]

    def load_api(self, api: dict) -> dict:
        """Load an API-form prompt the way the frontend does for a dropped API json; returns the
        UI-format workflow the frontend would save."""
        return self.page.evaluate(
            """async (api) => {
                window.app.loadApiJson(api, "workflow.json");
                await new Promise(r => setTimeout(r, 300));
                // arrange() lays out by current sizes; give image loaders room for their preview
                for (const n of window.app.graph._nodes)
                    if (n.type === "LoadImage") n.size = [315, 314];
                window.app.graph.arrange();
                return JSON.parse(JSON.stringify(window.app.graph.serialize()));
            }""", api)

    def load_ui(self, workflow: dict) -> None:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)

    def node_help(self, display_name: str) -> str | None:
        """The text the node library's help button shows for a node (its docs page); None where
        this frontend's library has no such button (1.58 keeps only Bookmark there)."""
        page = self.page
        page.locator("button.node-library-tab-button, button[aria-label^='Node Library']").first.click()
        search = page.locator("input[placeholder*='earch']").first
        search.wait_for(timeout=10_000)
        search.fill(display_name)
        leaf = page.locator(".p-tree-node-leaf, [role=treeitem]").filter(has_text=display_name).last
        leaf.hover()
        page.wait_for_timeout(300)
        button = leaf.locator("button.help-button, button[aria-label*='elp']")
        if button.count() == 0:
            return None
        button.first.click()
        page.wait_for_selector(f"h1:has-text('{display_name}')", timeout=10_000)
        return page.evaluate("() => document.body.innerText")

    def graph(self) -> dict:
        """The loaded graph as the frontend would save it."""
        return self.page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")

    def graph_to_prompt(self) -> dict:
        """The API form the frontend sends for the loaded graph."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def queue(self) -> None:
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")

    def screenshot(self, path: str, width: int = 960) -> None:
        """A picture of the whole graph, rendered at full detail and scaled to ``width``."""
        self.page.evaluate("""() => {
            const c = window.app.canvas;
            const nodes = window.app.graph._nodes;
            if (!nodes.length) return;
            let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
            for (const n of nodes) {
                x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
            }
            const w = c.canvas.width / (window.devicePixelRatio || 1), h = c.canvas.height / (window.devicePixelRatio || 1);
            const s = Math.max(0.7, Math.min(w / (x1 - x0 + 80), h / (y1 - y0 + 80), 1.2));
            c.ds.scale = s;
            c.ds.offset = [(w / s - (x1 - x0)) / 2 - x0, (h / s - (y1 - y0)) / 2 - y0];
            c.setDirty(true, true);
            c.draw(true, true);
        }""")
        self.page.wait_for_timeout(500)
        from io import BytesIO

        from PIL import Image

        shot = Image.open(BytesIO(self.page.locator("#graph-canvas").screenshot(type="png"))).convert("RGB")
        bbox = Image.eval(shot, lambda v: 255 if v > 40 else 0).getbbox()  # crop the empty canvas around the graph
        if bbox:
            pad = 20
            shot = shot.crop((max(0, bbox[0] - pad), max(0, bbox[1] - pad),
                              min(shot.width, bbox[2] + pad), min(shot.height, bbox[3] + pad)))
        if shot.width > width:
            shot = shot.resize((width, round(shot.height * width / shot.width)), Image.Resampling.LANCZOS)
        shot.save(path, quality=85) if path.endswith(".jpg") else shot.save(path)

    def close(self) -> None:
        try:
            self.context.close()
            self._pw.stop()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
