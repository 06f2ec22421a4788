"""Shared helpers of the evaluation modules: boolean columns, ratios, frame iteration and
one-to-one point matching. Private; see :mod:`migradetect.evaluate`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _visible(truth: pd.DataFrame) -> pd.DataFrame:
    """Rows of a truth migrasome table that are visible (all rows without a ``visible`` column)."""
    if "visible" not in truth.columns:
        return truth
    return truth[_as_bool(truth["visible"])]


def _detectable(truth: pd.DataFrame) -> np.ndarray:
    """Mask of the visible rows of ``truth`` that are detectable (all without the column)."""
    vis = _visible(truth)
    if "detectable" not in vis.columns:
        return np.ones(len(vis), dtype=bool)
    return _as_bool(vis["detectable"])


def _as_bool(col: pd.Series) -> np.ndarray:
    """A boolean column however it was read (bool, 0/1, "True"/"False"); missing is False."""
    if col.dtype == bool:
        return col.to_numpy()
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.fillna(0).to_numpy(float) != 0
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes")).to_numpy()


def _median(values: Any) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _frames(stack: Any) -> Iterator[np.ndarray]:
    """Yield ``(Y, X)`` numpy frames of a ``(T, Y, X)`` stack (or of one ``(Y, X)`` frame)."""
    if stack.ndim == 2:
        yield np.asarray(stack)
        return
    if stack.ndim != 3:
        raise ValueError(f"expected a (Y, X) or (T, Y, X) array, got shape {stack.shape}")
    for t in range(stack.shape[0]):
        yield np.asarray(stack[t])


def _check_same_shape(a: Any, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"stacks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def _match_points(a: np.ndarray, b: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, ...]:
    """One-to-one matching of points ``a`` (N, 2) to ``b`` (M, 2), pair i-j allowed only if
    their distance is <= ``radius[i]``. Maximises the number of pairs, then minimises the
    summed distance (Hungarian, solved per connected group of candidate pairs so that dense
    movies stay fast). Returns (i, j, distance) arrays."""
    empty = (np.empty(0, int), np.empty(0, int), np.empty(0, float))
    if len(a) == 0 or len(b) == 0:
        return empty
    # 'ndarray' output keeps zero distances (sparse matrix outputs would drop them).
    cand = cKDTree(a).sparse_distance_matrix(cKDTree(b), float(radius.max()), output_type="ndarray")
    cand = cand[cand["v"] <= radius[cand["i"]]]
    if len(cand) == 0:
        return empty
    n, m = len(a), len(b)
    graph = coo_matrix((np.ones(len(cand)), (cand["i"], n + cand["j"])), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    out_i, out_j, out_d = [], [], []
    edge_comp = comp[cand["i"]]
    for c in np.unique(edge_comp):
        e = cand[edge_comp == c]
        rows, ri = np.unique(e["i"], return_inverse=True)
        cols, ci = np.unique(e["j"], return_inverse=True)
        # A forbidden pair costs more than any set of allowed pairs can sum to.
        big = 1.0 + 2.0 * min(len(rows), len(cols)) * (float(e["v"].max()) + 1.0)
        cost = np.full((len(rows), len(cols)), big)
        cost[ri, ci] = e["v"]
        r, k = linear_sum_assignment(cost)
        ok = cost[r, k] < big
        out_i.append(rows[r[ok]])
        out_j.append(cols[k[ok]])
        out_d.append(cost[r[ok], k[ok]])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
