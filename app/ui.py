"""The Gradio Blocks page. Interface only: all decisions come from the Predictor via app.handlers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app.handlers import (
    DEFAULT_OPACITY,
    HEATMAP_NOTE,
    MAP_CHOICES,
    MAP_GRADCAM,
    MAP_LOCALISATION,
    NO_FILE_MESSAGE,
    RECALL_MAX,
    RECALL_MIN,
    RECALL_STEP,
    Handlers,
    InputProblem,
)
from app.model_card import NOT_A_DEVICE, REPORT_DIR, model_card_markdown, report_plots
from model.decision import BORDERLINE_ODDS, FRACTURE_SUSPECTED, NO_FRACTURE

log = logging.getLogger(__name__)

TITLE = "FractureLens"
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
SUSPECTED_COLOR, CLEAR_COLOR = "#fecaca", "#bbf7d0"  # light tints: the dark text stays readable
NOT_ASSESSED_COLOR = "#e5e7eb"
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}

CSS = """
#banner {background: #fff7e0; border: 1px solid #e0b300; border-radius: 8px; padding: 6px 14px;}
#banner p {margin: 0;}
.fl-warning {background: #fde8e8; border: 2px solid #c81e1e; color: #7f1d1d; border-radius: 8px;
             padding: 12px 16px; font-size: 1.1em; margin-bottom: 4px;}
.fl-error {background: #fff1e6; border: 2px solid #d9480f; color: #7c2d12; border-radius: 8px;
           padding: 10px 14px; font-size: 1.05em;}
#pred .output-class {font-size: 1.6em;}
footer {display: none !important;}
.fl-source {font-size: 1.05em; font-weight: 600; overflow-wrap: anywhere;}
/* example buttons: long file names wrap instead of being clipped */
#examples button, #examples .gallery-item {white-space: normal !important; overflow-wrap: anywhere; height: auto;}
#wl_table img {height: 80px; width: auto; max-width: none; display: block;}
#wl_table th {word-break: normal; overflow-wrap: normal; hyphens: none;}
#model_card th {word-break: normal; overflow-wrap: normal; hyphens: none; white-space: nowrap;}
#model_card table {display: block; overflow-x: auto;}
/* narrow screens (phones): the upload, then the decision and images, then the controls */
@media (max-width: 720px) {
  #main_row {flex-direction: column;}
  #left_col {display: contents;}
  #left_col > * {order: 3;}
  #left_col > :is(#xray, #status), #left_col > *:has(#xray), #left_col > *:has(#status) {order: 1;}
  #results_col {order: 2;}
}
"""

STRENGTH_LABEL = (f"Probability against the threshold (log-odds scale; shaded: borderline, within a factor "
                  f"{BORDERLINE_ODDS:g} of the threshold's odds)")
HOW_TO = (
    "Drop a radiograph (PNG, JPEG or DICOM) on the box. The network runs once; the target-recall slider "
    "then re-decides instantly from the cached probability. Higher recall = fewer missed fractures, more "
    "false alarms."
)


def theme() -> gr.themes.Base:
    """Default look with system fonts only: the page loads no web fonts (works fully offline)."""
    return gr.themes.Default(primary_hue="blue", font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def find_examples(root: str | os.PathLike | None, n: int = 4) -> list[tuple[str, str]]:
    """A few (path, label) example X-rays from a folder: the ones its examples.json lists, labelled by their role
    ("Borderline (leg)"; the committed assets/examples/), else a FracAtlas layout (images/Fractured,
    images/Non_fractured), class folders or plain files. Nothing is copied."""
    if not root:
        return []
    root = Path(root)
    if not root.is_dir():
        return []
    chosen = root / "examples.json"  # the committed examples (scripts/choose_examples.py): labelled by role
    if chosen.is_file():
        try:
            info = json.loads(chosen.read_text())["examples"]
            out = [(str(root / e["file"]), f"{role.capitalize()} ({e['region']})") for role, e in info.items()
                   if (root / e["file"]).is_file()]
            if out:
                return out[:n]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged list: fall back to the files themselves
    fa = root / "fracatlas" / "images" if (root / "fracatlas" / "images").is_dir() else root / "images"
    groups: list[tuple[str, list[Path]]] = []
    if (fa / "Fractured").is_dir():
        for cls, label in (("Fractured", "fractured"), ("Non_fractured", "not fractured")):
            files = sorted(p for p in (fa / cls).iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
            groups.append((label, files))
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
        groups.append(("", files))
    out: list[tuple[str, str]] = []
    per = max(1, n // len(groups))
    for label, files in groups:
        if not files:
            continue
        step = max(1, len(files) // per)
        for p in files[::step][:per]:
            out.append((str(p), f"{p.name} ({label})" if label else p.name))
    return out[:n]


def _define_decision_label() -> type:
    """gr.Label whose heading is the thresholded decision (not the top confidence).

    Its value is a LabelData dict {"label": decision, "confidences": [{"label", "confidence"}]}.
    A subclass (not an instance attribute) because Gradio rebuilds a component from its class when an
    event updates its properties (the colour here). Gradio's component metaclass writes a .pyi stub
    next to the defining module for editors; that is switched off while the class is defined so that
    importing the app never writes into the source tree."""
    from gradio.components.label import LabelConfidence, LabelData

    class DecisionLabel(gr.Label):
        is_template = True  # rendered by gr.Label's frontend

        def postprocess(self, value):
            if isinstance(value, dict) and isinstance(value.get("confidences"), list):
                return LabelData(label=str(value["label"]),
                                 confidences=[LabelConfidence(**c) for c in value["confidences"]])
            return super().postprocess(value)

    return DecisionLabel


def _without_pyi(define):
    import gradio.component_meta as component_meta

    original = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *a, **k: None
    try:
        return define()
    finally:
        component_meta.create_or_modify_pyi = original


DecisionLabel = _without_pyi(_define_decision_label)


def _analyse_tab(h: Handlers, examples: list[tuple[str, str]] | None) -> SimpleNamespace:
    """The Analyse tab's components (call inside gr.Tabs)."""
    meta, default_target = h.p.meta, h.default_target
    c = SimpleNamespace()
    with gr.Tab("Analyse", id="analyse"):
        with gr.Row(equal_height=False, elem_id="main_row"):
            with gr.Column(scale=2, min_width=280, elem_id="left_col"):
                c.xray = gr.File(label="X-ray (PNG, JPEG or DICOM)", elem_id="xray", file_count="single",
                                 type="filepath", height=140)
                c.status = gr.HTML("", elem_id="status", visible=False)
                c.recall = gr.Slider(RECALL_MIN, RECALL_MAX, value=default_target, step=RECALL_STEP,
                                     label="Target recall (sensitivity)", elem_id="recall",
                                     info="Share of fractures the threshold is chosen to catch")
                c.operating = gr.Markdown(h.operating_markdown(default_target), elem_id="oppoint")
                has_loc = bool(meta.loc_head)
                c.mapkind = gr.Radio(list(MAP_CHOICES) if has_loc else [MAP_GRADCAM],
                                     value=MAP_LOCALISATION if has_loc else MAP_GRADCAM, label="Heatmap",
                                     elem_id="mapkind")
                c.opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity",
                                      elem_id="opacity")
                if examples:
                    gr.Examples(examples=[[p] for p, _ in examples], inputs=[c.xray],
                                example_labels=[lab for _, lab in examples], label="Example X-rays (click one)",
                                elem_id="examples")
                gr.Markdown(HOW_TO)
            with gr.Column(scale=5, elem_id="results_col"):
                c.source = gr.HTML("", elem_id="source")
                c.warning = gr.HTML("", elem_id="warning", visible=False)
                c.reveal = gr.Checkbox(False, label="Show the withheld result (not meaningful for a non-X-ray)",
                                       elem_id="reveal", visible=False)
                with gr.Row():
                    c.pred = DecisionLabel(label="Decision", elem_id="pred", scale=3)
                    c.regions = gr.Label(label="Body region the model sees", num_top_classes=4, elem_id="region",
                                         scale=2)
                c.strength = gr.Image(label=STRENGTH_LABEL, elem_id="strength", interactive=False, type="pil",
                                      format="png", height=110, buttons=[], visible=True)
                with gr.Row():
                    c.image = gr.Image(label="X-ray as the model reads it", elem_id="input_view",
                                       interactive=False, type="pil", format="png", height=460,
                                       buttons=["fullscreen"])
                    with gr.Column():
                        c.overlay = gr.Image(label="Heatmap and fracture boxes", elem_id="cam", interactive=False,
                                             type="pil", format="png", height=460, buttons=["fullscreen"])
                        gr.Markdown(HEATMAP_NOTE, elem_id="cam_note")
                with gr.Accordion("Result as JSON (what /predict returns)", open=False):
                    c.details = gr.JSON(label="Result", elem_id="json")
    return c


def _model_card_tab(h: Handlers, report_dir: Path | None) -> None:
    with gr.Tab("Model card", id="card"):
        report = Path(report_dir) if report_dir else REPORT_DIR
        plots = report_plots(report)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Markdown(model_card_markdown(h.p.meta, report, getattr(h.p, "model_sha256", None),
                                                getattr(h.p, "calibration_summary", None)), elem_id="model_card")
            if plots:
                with gr.Column(scale=2, elem_id="card_plots"):
                    for caption, path in plots:  # the caption above the plot, not a chip over its title
                        gr.Markdown(f"**{caption}**")
                        gr.Image(str(path), label=caption, interactive=False, buttons=["fullscreen"], format="png",
                                 show_label=False)


def decision(value):
    """The decision label, tinted: red for "Fracture suspected", green for "No fracture detected" (either
    with "(borderline)" when it is), grey for "Not assessed"."""
    if not value:
        return gr.update(value=None, color=None)
    heading = str(value["label"])
    colour = (SUSPECTED_COLOR if heading.startswith(FRACTURE_SUSPECTED) else
              CLEAR_COLOR if heading.startswith(NO_FRACTURE) else NOT_ASSESSED_COLOR)
    return gr.update(value=value, color=colour)


def _wire_analyse(h: Handlers, c: SimpleNamespace, state) -> tuple[list, object]:
    """The Analyse tab's events and the /predict API; returns (the analysis outputs, the function that turns
    Handlers.analyze's dict into their values), which the Worklist tab reuses."""
    analysis_outputs = [state, c.status, c.source, c.pred, c.regions, c.strength, c.image, c.overlay, c.warning,
                        c.reveal, c.operating, c.details]

    def analysis_values(v) -> tuple:
        """Handlers.analyze's dict -> the values of analysis_outputs."""
        if v["message"]:
            gr.Warning(v["message"], duration=6)  # the toast goes; the message stays under the box
        return (v["state"], gr.HTML(v["status"], visible=bool(v["status"])), v["source"], decision(v["label"]),
                v["regions"], v["strength"], v["image"], v["overlay"],
                gr.HTML(v["warning"], visible=bool(v["warning"])), gr.Checkbox(False, visible=bool(v["warning"])),
                v["operating"], v["json"])

    def on_file(file, target, alpha, kind):
        """An upload (or example) -> the analysis; the upload box is emptied again, so the next file can be
        dropped straight onto it (and no link to the deleted upload stays on the page). Its own emptying
        triggers this again with None, which changes nothing."""
        if file is None:
            return tuple(gr.skip() for _ in range(len(analysis_outputs) + 1))
        return (*analysis_values(h.analyze(file, target, alpha, kind)), None)

    def on_recall(st, target, show, alpha, kind):
        v = h.redecide(st, target, show, alpha, kind)
        return v["state"], decision(v["label"]), v["operating"], v["json"], v["overlay"], v["regions"], v["strength"]

    def on_opacity(st, alpha, kind, show):
        return h.overlay_image(st, alpha, kind, show)

    def predict(file, target_recall):
        """X-ray file + target recall -> JSON: probability, decision, threshold, expected
        specificity/precision, is_xray, reason, body region, cam_peak ([x, y] of the Grad-CAM maximum),
        loc_peak (the fracture map's), boxes ([[x0, y0, x1, y1, score], ...]) in the image's pixels, and
        strength ("borderline" or "clear"). An image that fails the X-ray check gets decision "Not
        assessed" and null probability, region and peaks."""
        if file is None:
            raise gr.Error(NO_FILE_MESSAGE, print_exception=False)
        try:
            return h.predict_api(file, target_recall)
        except InputProblem as exc:  # one log line, the message only (it never names the file)
            log.warning("rejected an API input: %s", exc)
            raise gr.Error(str(exc), print_exception=False) from None

    quick = {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": None}
    inputs = [state, c.recall, c.reveal, c.opacity, c.mapkind]
    redecided = [state, c.pred, c.operating, c.details, c.overlay, c.regions, c.strength]
    # after the analysis, re-decide with the slider's value *now* (it may have moved meanwhile)
    c.xray.change(on_file, [c.xray, c.recall, c.opacity, c.mapkind], [*analysis_outputs, c.xray],
                  api_visibility="private", concurrency_id="model", concurrency_limit=1,
                  show_progress_on=[c.pred, c.overlay]).then(on_recall, inputs, redecided, **quick)
    c.recall.change(on_recall, inputs, redecided, api_name="redecide", api_visibility="undocumented",
                    trigger_mode="always_last", show_progress="hidden", concurrency_limit=None)
    c.reveal.change(on_recall, inputs, redecided, **quick)
    c.mapkind.change(on_opacity, [state, c.opacity, c.mapkind, c.reveal], c.overlay, **quick)
    c.opacity.change(on_opacity, [state, c.opacity, c.mapkind, c.reveal], c.overlay, trigger_mode="always_last",
                     **quick)
    # The JSON API: a hidden trigger using the visible file and slider components as its inputs. Its target is
    # a hidden Number (not the slider): the API accepts null (= the default target) and out-of-range values get
    # our own message instead of Gradio's slider validation.
    api_trigger = gr.Button(visible=False)
    api_target = gr.Number(value=h.default_target, visible=False, label="target_recall")
    api_trigger.click(predict, [c.xray, api_target], c.details, api_name="predict", concurrency_id="model",
                      concurrency_limit=1)
    return analysis_outputs, analysis_values


def build_demo(handlers: Handlers, examples: list[tuple[str, str]] | None = None,
               report_dir: Path | None = None, worklist=None) -> gr.Blocks:
    """The page: the Analyse tab, with a pacs.worklist.Worklist a "Worklist" tab (app/worklist_tab.py), and the
    Model card tab."""
    h = handlers
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown(f"# {TITLE}\nFracture triage for musculoskeletal X-rays.")
        gr.Markdown("⚠️ " + NOT_A_DEVICE, elem_id="banner")
        state = gr.State(None, time_to_live=900)  # per-session cache, dropped after 15 min
        with gr.Tabs(elem_id="tabs") as tabs:
            c = _analyse_tab(h, examples)
            if worklist is not None:
                from app.worklist_tab import worklist_tab

                wl = worklist_tab(h, worklist)
            _model_card_tab(h, report_dir)
        analysis_outputs, analysis_values = _wire_analyse(h, c, state)
        if worklist is not None:
            wl.wire(analysis_outputs, analysis_values, tabs, c.recall, c.opacity, c.mapkind)

    # Example files are copied into Gradio's cache once at build time; never delete those copies.
    for block in demo.blocks.values():
        for p in getattr(block, "keep_in_cache", ()):
            h.protect(p)
    return demo


def launch_kwargs() -> dict:
    # state_session_capacity: at most this many sessions keep a cached analysis (~2 MB each)
    return {"theme": theme(), "css": CSS, "footer_links": ["api"], "state_session_capacity": 256}
