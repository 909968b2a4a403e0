"""The "Worklist" tab (`python -m app --pacs URL`): interface only; the PACS side is pacs/worklist.py.

The table lists the server's projection radiographs sorted by fracture probability (from the FractureLens SRs),
with the decision recomputed at this tab's target recall by Predictor.decide (no network). "Refresh" lists
again; "Score new images" runs the bridge's scan (pacs.bridge.scan) with the app's Predictor, then lists again.
Patient name, ID and study date are shown only when the checkbox is ticked. Clicking a row fetches the
instance, analyses it as an upload and switches to the Analyse tab. Nothing here logs patient data.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from app.handlers import RECALL_MAX, RECALL_MIN, RECALL_STEP, Handlers
from pacs import worklist as wl
from pacs.bridge import BridgeError, scan

log = logging.getLogger(__name__)

SCAN_BATCH = 50  # "Score new images" scores at most this many instances per click (about 3 s each on 2 cores)
# shares of the table's width (the table fits its tab: no horizontal scrolling, long values wrap)
COLUMN_WIDTHS = ["5%", "10%", "10%", "16%", "8%", "10%", "23%", "18%"]
COLUMN_WIDTHS_IDS = ["4%", "8%", "8%", "12%", "6%", "8%", "16%", "13%", "11%", "8%", "6%"]
IDS_LABEL = "Show patient identifiers (authorised local use)"
HOW_TO = (
    "Projection radiographs (CR, DX, RG) on the PACS, **highest fracture probability first**, then images not "
    "scored yet, then images that failed the X-ray check, then images the analysis failed on (with the reason; a "
    "scan skips them unless `python -m pacs scan --retry-failed`). The decision follows this tab's target recall. "
    "**Click a row** to open it in the Analyse tab. Results written back to the PACS are marked NOT FOR "
    "DIAGNOSTIC USE."
)


def _table(entries: list[wl.Entry], decide, target: float, show_ids: bool) -> gr.Dataframe:
    headers, rows = wl.rows(entries, decide, float(target), bool(show_ids))
    datatype = ["number", "markdown"] + ["str"] * (len(headers) - 2)
    widths = COLUMN_WIDTHS_IDS if show_ids else COLUMN_WIDTHS
    return gr.Dataframe(value=pd.DataFrame(rows, columns=headers), datatype=datatype, column_widths=widths)


class WorklistTab:
    def __init__(self, h: Handlers, worklist: wl.Worklist):
        self.h, self.worklist = h, worklist
        with gr.Tab("Worklist", id="worklist") as self.tab:
            with gr.Row(equal_height=True):
                self.recall = gr.Slider(RECALL_MIN, RECALL_MAX, value=h.default_target, step=RECALL_STEP,
                                        label="Target recall (sensitivity)", elem_id="wl_recall", scale=3)
                self.ids = gr.Checkbox(False, label=IDS_LABEL, elem_id="wl_ids", scale=2)
                self.refresh = gr.Button("Refresh", elem_id="wl_refresh", scale=1)
                self.scan = gr.Button("Score new images", elem_id="wl_scan", variant="primary", scale=1)
            self.status = gr.Markdown("", elem_id="wl_status")
            headers, _ = wl.rows([], h.p.decide, h.default_target)
            self.table = gr.Dataframe(pd.DataFrame([], columns=headers), elem_id="wl_table", interactive=False,
                                      datatype=["number", "markdown"] + ["str"] * (len(headers) - 2),
                                      wrap=True, max_height=900, show_search="none", label="Worklist",
                                      column_widths=COLUMN_WIDTHS)
            gr.Markdown(HOW_TO)
        self.entries = gr.State([], time_to_live=900)

    # -- events ---------------------------------------------------------------------------------
    def list_entries(self, target, show_ids, note: str = ""):
        try:
            entries = self.worklist.entries()
        except BridgeError as exc:
            log.warning("worklist: %s", exc)  # the message names no patient, UID or URL
            return gr.skip(), gr.skip(), f"⚠️ {exc}"
        text = wl.counts_text(entries, self.worklist.truncated)
        return entries, _table(entries, self.h.p.decide, target, show_ids), (f"{note}\n\n{text}" if note else text)

    def score_new(self, target, show_ids):
        try:
            summary = scan(self.worklist.client, self.h.p, float(target), progress=False, limit=SCAN_BATCH)
        except BridgeError as exc:
            log.warning("worklist scan: %s", exc)
            return gr.skip(), gr.skip(), f"⚠️ {exc}"
        return self.list_entries(target, show_ids, note=f"**Scan:** {summary.text()}")

    def redraw(self, entries, target, show_ids):
        return _table(entries or [], self.h.p.decide, target, show_ids)

    def open_row(self, entries, target, alpha, kind, evt: gr.SelectData, show_ids: bool = False):
        """A clicked row -> fetch the instance, analyse it like an upload, show the Analyse tab (which says
        which worklist row it is: rank, modality, body part, and the patient when identifiers are shown)."""
        try:
            rank = int((evt.row_value or [None])[0])
            entry = entries[rank - 1]
        except (TypeError, ValueError, IndexError):
            return None
        try:
            data = self.worklist.fetch(entry)
        except BridgeError as exc:
            log.warning("worklist: %s", exc)
            gr.Warning(str(exc), duration=6)
            return None
        return self.h.analyze_bytes(data, target, alpha, kind,
                                    source=wl.source_text(entry, rank, len(entries), bool(show_ids)))

    def wire(self, analysis_outputs, analysis_values, tabs, analyse_recall, opacity, mapkind) -> None:
        listing = [self.entries, self.table, self.status]
        self.tab.select(self.list_entries, [self.recall, self.ids], listing, api_visibility="private",
                        show_progress_on=[self.status])
        self.refresh.click(self.list_entries, [self.recall, self.ids], listing, api_visibility="private",
                           show_progress_on=[self.status])
        self.scan.click(self.score_new, [self.recall, self.ids], listing, api_visibility="private",
                        concurrency_id="model", concurrency_limit=1, show_progress_on=[self.status])
        for trigger in (self.recall.change, self.ids.change):
            trigger(self.redraw, [self.entries, self.recall, self.ids], self.table, api_visibility="private",
                    show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)

        def on_select(entries, target, alpha, kind, show_ids, evt: gr.SelectData):
            v = self.open_row(entries, target, alpha, kind, evt, show_ids)
            if v is None:
                return tuple(gr.skip() for _ in range(len(analysis_outputs) + 2))
            # the Analyse tab's slider takes this tab's target, so both show the same operating point
            return (*analysis_values(v), gr.Tabs(selected="analyse"), float(target))

        self.table.select(on_select, [self.entries, self.recall, opacity, mapkind, self.ids],
                          [*analysis_outputs, tabs, analyse_recall], api_visibility="private",
                          concurrency_id="model", concurrency_limit=1, show_progress_on=[self.status])


def worklist_tab(h: Handlers, worklist: wl.Worklist) -> WorklistTab:
    """Build the tab (call inside gr.Tabs); wire it with .wire(...) once the Analyse tab's outputs exist."""
    return WorklistTab(h, worklist)
