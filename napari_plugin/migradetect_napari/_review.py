"""The review widget: browse migrasome tracks, accept / reject / reassign / add, save.

Works on the ``migrasomes`` points layer that the reader (a results folder) or the run
widget adds; the tables travel in that layer's metadata, the curation itself is done by the
pure functions of :mod:`migradetect.curation`, and "Save curated" writes ``curated/`` beside
the automatic results (never over them).

Keyboard shortcuts (viewer key bindings, active while the widget is open)
------------------------------------------------------------------------
``a``  accept the selected track          ``r``  reject the selected track
``n``  select the next track              ``d``  reject the selected track's detection
                                                  in the current frame
Mouse modes: "Reassign to cell..." -- the next click on the image picks the cell under the
pointer (from the ``cells`` labels layer) and gives it the selected track; "Add migrasome"
-- the next click places a migrasome of the chosen diameter in the current frame.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import napari.viewer

from migradetect import curation, layers
from migradetect.errors import MigradetectError

from ._layers import camera, find_layer, find_layers, meta

log = logging.getLogger(__name__)

#: Columns of the track table (tracks.csv names).
TABLE_COLUMNS = ("track_id", "cell_id", "curation", "first_frame", "n_frames",
                 "max_diameter_um", "assign_reason")
#: Key bindings: key -> method name.
KEYS = {"a": "accept_track", "r": "reject_track", "n": "next_track",
        "d": "reject_detection"}


class _Item(QTableWidgetItem):
    """A table cell that sorts by its value (numbers numerically)."""

    def __init__(self, value: Any) -> None:
        text = (f"{value:.3g}" if isinstance(value, float) else str(value))
        super().__init__(text)
        self.value = value
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.value, getattr(other, "value", other.text())
        try:
            return float(a) < float(b)
        except (TypeError, ValueError):
            return str(a) < str(b)


class ReviewWidget(QWidget):
    """Review and curate migrasome tracks (npe2 widget "Review migrasomes")."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.points: Any = None
        self.tables: dict[str, pd.DataFrame] | None = None
        self.mode: str | None = None  # None, "pick_cell" or "add"
        self.selected: int | None = None

        self.source = QLabel("no migradetect results in the viewer")
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._on_table_selection)

        buttons = {}
        for key, text in (("accept_track", "Accept track (a)"),
                          ("reject_track", "Reject track (r)"),
                          ("next_track", "Next (n)"),
                          ("accept_detection", "Accept detection"),
                          ("reject_detection", "Reject detection (d)"),
                          ("start_pick_cell", "Reassign to cell..."),
                          ("start_add", "Add migrasome..."),
                          ("save", "Save curated")):
            button = QPushButton(text)
            button.clicked.connect(lambda _checked=False, k=key: getattr(self, k)())
            buttons[key] = button
        self.buttons = buttons
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0.1, 10.0)
        self.diameter.setSingleStep(0.1)
        self.diameter.setValue(1.0)
        self.diameter.setSuffix(" µm")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.figure = Figure(figsize=(3.5, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)

        layout = QVBoxLayout(self)
        layout.addWidget(self.source)
        layout.addWidget(self.table)
        for row in (("accept_track", "reject_track", "next_track"),
                    ("accept_detection", "reject_detection"),
                    ("start_pick_cell", "start_add"), ("save",)):
            line = QHBoxLayout()
            for key in row:
                line.addWidget(buttons[key])
                if key == "start_add":
                    line.addWidget(self.diameter)
            layout.addLayout(line)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

        for key, name in KEYS.items():
            viewer.bind_key(key, self._key_handler(name), overwrite=True)
        viewer.mouse_drag_callbacks.append(self._on_click)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        callback = self._on_click
        self.destroyed.connect(lambda *_: self._disconnect(viewer, callback))
        self.refresh_source()

    # ------------------------------------------------------------------ plumbing
    def _key_handler(self, name: str):
        def handler(_viewer: Any) -> None:
            getattr(self, name)()
        handler.__doc__ = f"migradetect review: {name.replace('_', ' ')}"
        return handler

    @staticmethod
    def _disconnect(viewer: Any, callback: Any) -> None:
        """Drop the key bindings and the click callback when the widget is closed."""
        for key in KEYS:
            try:
                viewer.bind_key(key, None, overwrite=True)
            except (KeyError, TypeError, ValueError):
                pass
        if callback in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(callback)

    def _on_layers_changed(self, _event: Any = None) -> None:
        if self.points is None or self.points not in self.viewer.layers:
            self.refresh_source()

    def refresh_source(self, points: Any = None) -> bool:
        """Use ``points`` (default: the last migradetect migrasomes layer) as the source."""
        if points is None:
            candidates = [p for p in find_layers(self.viewer, "migrasomes")
                          if "tables" in meta(p)]
            points = candidates[-1] if candidates else None
        self.points = points
        if points is None:
            self.tables = None
            self.source.setText("no migradetect results in the viewer: open a results folder "
                                "or run the analysis")
            self._fill_table()
            return False
        self.tables = curation.start(meta(points)["tables"])
        where = meta(points).get("movie_dir") or "(not saved: give an output folder to run)"
        self.source.setText(f"{meta(points).get('movie') or points.name}: {where}")
        self._fill_table()
        return True

    @property
    def pixel_size_um(self) -> float:
        return float(meta(self.points).get("pixel_size_um") or 1.0)

    @property
    def frame_interval_s(self) -> float | None:
        value = meta(self.points).get("frame_interval_s")
        return None if value is None else float(value)

    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        tracks = (self.tables["tracks.csv"] if self.tables is not None
                  else pd.DataFrame(columns=list(TABLE_COLUMNS)))
        self.table.setRowCount(len(tracks))
        for r, row in enumerate(tracks.itertuples(index=False)):
            rec = row._asdict()
            for c, col in enumerate(TABLE_COLUMNS):
                value = rec[col]
                value = value.item() if hasattr(value, "item") else value
                self.table.setItem(r, c, _Item(value))
        self.table.setSortingEnabled(True)
        self.table.blockSignals(False)
        if self.selected is not None:
            self._select_row_of(self.selected, navigate=False)

    def _row_track(self, row: int) -> int | None:
        item = self.table.item(row, 0)
        return None if item is None else int(item.value)

    def _select_row_of(self, track_id: int, *, navigate: bool = True) -> None:
        for r in range(self.table.rowCount()):
            if self._row_track(r) == int(track_id):
                self.table.blockSignals(not navigate)
                self.table.selectRow(r)
                self.table.blockSignals(False)
                break
        if navigate:
            self.select_track(track_id)

    def _on_table_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            tid = self._row_track(rows[0].row())
            if tid is not None and tid != self.selected:
                self.select_track(tid)

    def _sync(self, message: str = "") -> None:
        """Push the curated tables to the layers, the table and the plot."""
        assert self.tables is not None and self.points is not None
        t = self.tables
        data, kw, _ = layers.migrasome_points(t["migrasomes.csv"],
                                              pixel_size_um=self.pixel_size_um,
                                              frame_interval_s=self.frame_interval_s)
        p = self.points
        p.data = data
        p.features = kw["features"]
        p.size = kw["size"]
        p.face_color = kw["face_color"]
        p.metadata[layers.METADATA_KEY]["tables"] = dict(t)
        movie_dir = meta(p).get("movie_dir")
        old = find_layer(self.viewer, "migrasome_tracks", movie_dir)
        new = layers.migrasome_tracks(t["migrasomes.csv"], pixel_size_um=self.pixel_size_um,
                                      frame_interval_s=self.frame_interval_s)
        if old is not None:
            if new is None:
                old.visible = False
            else:
                old.data = new[0]
                old.features = new[1]["features"]
                old.visible = True
        self._fill_table()
        self._plot()
        if message:
            self.status.setText(message)

    # ------------------------------------------------------------------ navigation
    def select_track(self, track_id: int) -> None:
        """Select a track: go to its birth frame, centre the camera on it, plot its growth."""
        if self.tables is None:
            return
        self.selected = int(track_id)
        self._select_row_of(track_id, navigate=False)
        mig = self.tables["migrasomes.csv"]
        d = mig.loc[mig["track_id"] == int(track_id)].sort_values("frame")
        tracks = self.tables["tracks.csv"].set_index("track_id")
        first = int(tracks.loc[int(track_id), "first_frame"]) if int(track_id) in tracks.index \
            else (int(d["frame"].iloc[0]) if len(d) else 0)
        self.viewer.dims.set_current_step(0, first)
        if len(d):
            y, x = float(d["y_px"].iloc[0]), float(d["x_px"].iloc[0])
            camera(self.viewer).center = (y * self.pixel_size_um, x * self.pixel_size_um)
        self._plot()

    def next_track(self) -> None:
        """Select the next track in the table's current order (wraps around)."""
        n = self.table.rowCount()
        if n == 0:
            return
        rows = self.table.selectionModel().selectedRows()
        r = (rows[0].row() + 1) % n if rows else 0
        tid = self._row_track(r)
        if tid is not None:
            self.table.blockSignals(True)
            self.table.selectRow(r)
            self.table.blockSignals(False)
            self.select_track(tid)

    def current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0])

    def _plot(self) -> None:
        ax = self.axes
        ax.clear()
        ax.set_xlabel("time (s)")
        ax.set_ylabel("diameter (µm)")
        if self.tables is not None and self.selected is not None:
            mig = self.tables["migrasomes.csv"]
            d = mig.loc[mig["track_id"] == self.selected].sort_values("frame")
            ok = d["curation"] != "rejected"
            ax.plot(d.loc[ok, "time_s"], d.loc[ok, "diameter_um"], "o-", color="C3",
                    label="kept")
            if (~ok).any():
                ax.plot(d.loc[~ok, "time_s"], d.loc[~ok, "diameter_um"], "x", color="0.5",
                        label="rejected")
            ax.set_title(f"track {self.selected}", fontsize=9)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ actions
    def _need_track(self) -> int | None:
        if self.tables is None or self.selected is None:
            self.status.setText("select a track first")
            return None
        return self.selected

    def accept_track(self) -> None:
        """Accept the selected track (all its detections)."""
        tid = self._need_track()
        if tid is not None:
            self.tables = curation.set_track(self.tables, tid, "accepted")
            self._sync(f"track {tid} accepted")

    def reject_track(self) -> None:
        """Reject the selected track (all its detections)."""
        tid = self._need_track()
        if tid is not None:
            self.tables = curation.set_track(self.tables, tid, "rejected")
            self._sync(f"track {tid} rejected")

    def _detection(self, state: str) -> None:
        tid = self._need_track()
        if tid is None:
            return
        t = self.current_frame()
        try:
            self.tables = curation.set_detection(self.tables, tid, t, state)
        except KeyError:
            self.status.setText(f"track {tid} has no detection in frame {t}")
            return
        self._sync(f"track {tid}, frame {t}: detection {state}")

    def accept_detection(self) -> None:
        """Accept the selected track's detection in the current frame."""
        self._detection("accepted")

    def reject_detection(self) -> None:
        """Reject the selected track's detection in the current frame."""
        self._detection("rejected")

    def start_pick_cell(self) -> None:
        """Next click on the image picks the cell that the selected track is given to."""
        if self._need_track() is not None:
            self.mode = "pick_cell"
            self.status.setText(f"click the cell that made track {self.selected}")

    def start_add(self) -> None:
        """Next click on the image adds a migrasome there, in the current frame."""
        if self.tables is None:
            self.status.setText("no results to add to")
            return
        self.mode = "add"
        self.status.setText("click where the missed migrasome is")

    def _on_click(self, _viewer: Any, event: Any) -> None:
        if self.mode is None or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        mode, self.mode = self.mode, None
        if mode == "pick_cell":
            self.pick_cell_at(event.position)
        elif mode == "add":
            self.add_at(event.position)

    def _data_position(self, world: Any) -> tuple[int, float, float]:
        """(frame, y_px, x_px) of a world position (s, µm, µm)."""
        t, y, x = (float(v) for v in np.asarray(self.points.world_to_data(world))[-3:])
        return int(round(t)), y, x

    def pick_cell_at(self, world: Any) -> int | None:
        """Give the selected track to the cell under ``world`` (cells labels layer)."""
        tid = self._need_track()
        if tid is None:
            return None
        cells = find_layer(self.viewer, "cells_labels", meta(self.points).get("movie_dir"))
        if cells is None:
            self.status.setText("no cells labels layer to pick from")
            return None
        value = cells.get_value(world, world=True)
        cell_id = int(value) if value is not None and not (
            isinstance(value, float) and math.isnan(value)) else 0
        if cell_id <= 0:
            self.status.setText("no cell there: click inside a cell")
            return None
        self.tables = curation.reassign_track(self.tables, tid, cell_id)
        self._sync(f"track {tid} reassigned to cell {cell_id}")
        return cell_id

    def add_at(self, world: Any) -> int | None:
        """Add a migrasome of the chosen diameter at ``world`` in its frame; returns its id."""
        if self.tables is None:
            return None
        frame, y, x = self._data_position(world)
        self.tables, tid = curation.add_migrasome(
            self.tables, frame=frame, y_px=y, x_px=x, diameter_um=float(self.diameter.value()),
            pixel_size_um=self.pixel_size_um, frame_interval_s=self.frame_interval_s)
        self.selected = tid
        self._sync(f"added track {tid} in frame {frame}")
        return tid

    def save(self) -> Path | None:
        """Save the curation in ``curated/`` beside the automatic results."""
        if self.tables is None:
            self.status.setText("nothing to save")
            return None
        movie_dir = meta(self.points).get("movie_dir")
        if not movie_dir:
            self.status.setText("these results are not in a folder: run with an output folder "
                                "(or open a results folder) to save a curation")
            return None
        try:
            folder = curation.save_curated(self.tables, movie_dir)
        except MigradetectError as exc:
            self.status.setText(str(exc))
            return None
        info = curation.curation_info(movie_dir)
        meta(self.points)["curated"] = True
        self.status.setText(f"saved {folder}: {info.get('n_migrasomes_curated')} migrasomes "
                            f"counted (automatic: {info.get('n_migrasomes_auto')})")
        return folder
