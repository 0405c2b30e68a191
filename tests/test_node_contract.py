"""The ComfyUI nodes' compatibility contract, read from nodes/schema.py without ComfyUI (CI has
none; schema.py imports comfy_api): node IDs, display names, input names and order (optional
ones stay optional), output types and order, and execute() taking the inputs by those names.
Saved workflows and API graphs depend on all of it. The real host checks /object_info too
(tests/comfyui/test_host.py)."""
from __future__ import annotations

import ast
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "nodes" / "schema.py"

CONTRACT = {  # node id -> (display name, [(input, io type, optional)], [(output io type, name)])
    "RealESRGAN_LoadUpscaleModel": (
        "Load Upscale Model (Real-ESRGAN)",
        [("model_name", "Combo", False)],
        [("UpscaleModel", "upscale_model")]),
    "RealESRGAN_UpscaleImageTiled": (
        "Upscale Image Tiled (Real-ESRGAN)",
        [("upscale_model", "UpscaleModel", False), ("image", "Image", False), ("tile_size", "Int", False),
         ("overlap", "Int", False), ("precision", "Combo", False)],
        [("Image", None)]),
    "RealESRGAN_HiresFixUpscale": (
        "Hires-Fix Upscale (Real-ESRGAN)",
        [("image", "Image", False), ("scale_by", "Float", False), ("width", "Int", False), ("height", "Int", False),
         ("resample", "Combo", False), ("multiple_of", "Int", False), ("upscale_model", "UpscaleModel", True),
         ("vae", "Vae", True), ("model_passes", "Combo", True)],
        [("Image", "image"), ("Latent", "latent"), ("String", "report")]),
    "RealESRGAN_InterpolateUpscaleModels": (
        "Interpolate Upscale Models (Real-ESRGAN)",
        [("model_a", "UpscaleModel", False), ("model_b", "UpscaleModel", False), ("weight", "Float", False)],
        [("UpscaleModel", "upscale_model")]),
    "RealESRGAN_UpscaleVideo": (
        "Upscale Video (Real-ESRGAN)",
        [("upscale_model", "UpscaleModel", False), ("video", "Video", False), ("tile_size", "Int", False),
         ("overlap", "Int", False), ("precision", "Combo", False), ("codec", "Combo", False), ("crf", "Int", False)],
        [("Video", None)]),
    "RealESRGAN_UpscaleImagesToVideo": (
        "Upscale Images to Video (Real-ESRGAN)",
        [("upscale_model", "UpscaleModel", False), ("images", "Image", False), ("fps", "Float", False),
         ("tile_size", "Int", False), ("overlap", "Int", False), ("precision", "Combo", False),
         ("codec", "Combo", False), ("crf", "Int", False), ("audio", "Audio", True)],
        [("Video", None)]),
}


def _keywords(call: ast.Call) -> dict:
    return {k.arg: k.value for k in call.keywords}


def _io_type(call: ast.Call) -> str:
    """io.Int.Input(...) -> "Int"."""
    return call.func.value.attr


def _literal(node, default=None):
    return default if node is None else ast.literal_eval(node)


def _input_calls(elts: list, helpers: dict) -> list[ast.Call]:
    """The inputs list, with ``*helper()`` (a module-level function returning a list of inputs) spread."""
    calls = []
    for e in elts:
        if isinstance(e, ast.Starred):
            calls += _input_calls(helpers[e.value.func.id], helpers)
        else:
            calls.append(e)
    return calls


def _list_helpers(tree: ast.Module) -> dict:
    helpers = {}
    for f in tree.body:
        if isinstance(f, ast.FunctionDef):
            returned = [n.value for n in ast.walk(f) if isinstance(n, ast.Return) and isinstance(n.value, ast.List)]
            if returned:
                helpers[f.name] = returned[0].elts
    return helpers


def declared_nodes() -> dict:
    """node id -> (display name, inputs, outputs, execute's parameter names, input defaults)."""
    out = {}
    tree = ast.parse(SCHEMA.read_text())
    helpers = _list_helpers(tree)
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        if "define_schema" not in methods:
            continue
        schema = next(n for n in ast.walk(methods["define_schema"])
                      if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "Schema")
        kw = _keywords(schema)
        calls = _input_calls(kw["inputs"].elts, helpers)
        inputs = [(_literal(c.args[0]), _io_type(c), _literal(_keywords(c).get("optional"), False)) for c in calls]
        defaults = {_literal(c.args[0]): _literal(_keywords(c).get("default")) for c in calls}
        outputs = [(_io_type(c), _literal(_keywords(c).get("display_name"))) for c in kw["outputs"].elts]
        params = [a.arg for a in methods["execute"].args.args[1:]]
        out[_literal(kw["node_id"])] = (_literal(kw["display_name"]), inputs, outputs, params, defaults)
    return out


def test_node_ids_names_inputs_and_outputs_are_the_released_ones():
    declared = declared_nodes()
    assert set(declared) == set(CONTRACT)
    for node_id, (display, inputs, outputs) in CONTRACT.items():
        assert declared[node_id][:3] == (display, inputs, outputs), node_id


def test_execute_takes_the_inputs_by_their_names_in_order():
    for node_id, (_, inputs, _, params, _) in declared_nodes().items():
        assert params == [name for name, _, _ in inputs], node_id


def test_defaults_that_keep_saved_workflows_results():
    hires = declared_nodes()["RealESRGAN_HiresFixUpscale"][4]
    assert hires["model_passes"] == "1"  # a workflow saved before model_passes keeps one pass
    assert hires["scale_by"] == 2.0 and hires["multiple_of"] == 8
    tiled = declared_nodes()["RealESRGAN_UpscaleImageTiled"][4]
    assert tiled["tile_size"] == 0 and tiled["overlap"] == 0 and tiled["precision"] == "auto"
    for video in ("RealESRGAN_UpscaleVideo", "RealESRGAN_UpscaleImagesToVideo"):
        defaults = declared_nodes()[video][4]
        assert (defaults["codec"], defaults["crf"], defaults["tile_size"], defaults["precision"]) == ("libx264", -1, 0, "auto")
