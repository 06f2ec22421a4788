"""Assignment of migrasome tracks to cells on hand-made label stacks with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from migradetect.assign import AssignConfig, assign_tracks
from migradetect.errors import InputError

PX = 0.5  # µm per pixel
SHAPE = (80, 160)
T = 8


def _disk(cy, cx, r):
    yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _cells(centres):
    """centres: {cell_id: [(cy, cx) per frame or None]} -> labels stack and cell_frames."""
    stack = np.zeros((T, *SHAPE), np.int32)
    rows = []
    for cid, path in centres.items():
        for t, c in enumerate(path):
            if c is not None:
                stack[t][_disk(*c, 8)] = cid
                rows.append((t, cid, float(c[0]), float(c[1])))
    return stack, pd.DataFrame(rows, columns=["frame", "cell_id", "y_px", "x_px"])


def _mig(track_id, y, x, frames):
    return pd.DataFrame({"track_id": track_id, "frame": list(frames), "y_px": y, "x_px": x})


def _run(mig, fibers_tab, fiber_stack, cell_stack, cf, **kw):
    kw.setdefault("fiber_geodesic", False)  # the fiber table's cell decides (hand-made tables)
    return assign_tracks(mig, fibers_tab, cf, fiber_labels=fiber_stack, cell_labels=cell_stack,
                         pixel_size_um=PX, config=AssignConfig(**kw))


def test_fiber_at_birth():
    # cell 3 moves right; a fiber from its rear (x = 20..40 at y = 40) holds migrasome at x = 21
    cells, cf = _cells({3: [(40, 50 + 3 * t) for t in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[:, 40, 20:42] = 4
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 4, "cell_id": 3})
    out = _run(_mig(0, 40.3, 21.0, range(2, 8)), fibers_tab, fib, cells, cf)
    assert out.to_dict("list") | {"assign_distance_um": None} == {
        "track_id": [0], "cell_id": [3], "assign_reason": ["fiber_at_birth"],
        "assign_distance_um": None}
    assert out.assign_distance_um[0] == pytest.approx(0.15)


def test_broken_fiber_rear_path_and_not_in_view_and_ambiguous():
    # cell 1 moves right along y = 28 and passes over x = 60 (its rear leaves it at t ~ 4)
    # cell 2 moves right along y = 54, far from the migrasome of cell 1
    cells, cf = _cells({1: [(28, 40 + 6 * t) for t in range(T)],
                        2: [(54, 40 + 6 * t) for t in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[:, 28, 50:66] = 9  # a broken fiber (no cell) under the migrasome
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 9, "cell_id": -1})
    mig = pd.concat([
        _mig(0, 28.0, 62.0, range(5, 8)),       # born after cell 1's rear passed
        _mig(1, 5.0, 155.0, range(0, 8)),       # never near any cell
        _mig(2, 41.0, 60.0, range(6, 8)),       # halfway between the two cells' paths
    ])
    out = _run(mig, fibers_tab, fib, cells, cf)
    got = dict(zip(out.track_id, zip(out.cell_id, out.assign_reason)))
    assert got[0] == (1, "rear_path")
    assert got[1] == (-1, "cell_not_in_view")
    assert got[2] == (-1, "ambiguous")
    # with a tighter rear distance, the in-between migrasome sees no cell at all
    out = _run(mig, fibers_tab, fib, cells, cf, rear_distance_um=2.0)
    assert out.set_index("track_id").assign_reason[2] == "cell_not_in_view"


def test_migrasome_ahead_of_cell_is_not_its():
    cells, cf = _cells({1: [(20, 40 + 4 * t) for t in range(T)]})
    # at birth (frame 2) the migrasome is just ahead of the cell front: not left behind by it
    out = _run(_mig(0, 20.0, 60.0, range(2, 5)), None, None, cells, cf, rear_lookback_frames=2)
    assert (out.cell_id[0], out.assign_reason[0]) == (-1, "ambiguous")


def test_drift_moves_lookup():
    cells, cf = _cells({1: [(20, 40 + 6 * t) for t in range(T)]})
    drift = pd.DataFrame({"frame": range(T), "dy_px": 0.0, "dx_px": [0, 0, 0, 0, 0, 30, 30, 30.0]})
    # image position at frames 5..7 is the corrected position + 30 px; corrected x = 62
    mig = _mig(0, 20.0, 92.0, range(5, 8))
    cells_shifted = cells.copy()
    for t in range(5, T):
        cells_shifted[t] = np.roll(cells[t], 30, axis=1)
    cf_shifted = cf.assign(x_px=cf.x_px + np.where(cf.frame >= 5, 30.0, 0.0))
    out = assign_tracks(mig, None, cf_shifted, fiber_labels=None, cell_labels=cells_shifted,
                        pixel_size_um=PX, drift=drift)
    assert (out.cell_id[0], out.assign_reason[0]) == (1, "rear_path")


def test_empty_and_bad():
    out = assign_tracks(_mig(0, 1.0, 1.0, []), None, None, fiber_labels=None, cell_labels=None,
                        pixel_size_um=PX)
    assert len(out) == 0 and list(out.columns)[:3] == ["track_id", "cell_id", "assign_reason"]
    with pytest.raises(InputError, match="track_id"):
        assign_tracks(pd.DataFrame({"frame": [0]}), None, None, fiber_labels=None,
                      cell_labels=None, pixel_size_um=PX)


def test_fiber_attached_before_first_detection():
    # the fiber under the migrasome belongs to cell 3 until frame 3, then breaks; the
    # migrasome is first detected at frame 5: it was born on cell 3's fiber
    cells, cf = _cells({3: [(40, 60 + 6 * t) for t in range(T)],
                        4: [(10, 150 - 6 * t) for t in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[:, 40, 20:50] = 6
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 6,
                               "cell_id": [3, 3, 3, 3, -1, -1, -1, -1]})
    out = _run(_mig(0, 40.0, 22.0, range(5, 8)), fibers_tab, fib, cells, cf)
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "fiber_at_birth")
    out = _run(_mig(0, 40.0, 22.0, range(5, 8)), fibers_tab, fib, cells, cf,
               rear_lookback_frames=0, rear_distance_um=1.0)
    assert (out.cell_id[0], out.assign_reason[0]) == (-1, "cell_not_in_view")


def test_birth_frame_fiber_on_neighbour_is_outvoted_by_producing_cell():
    # cell 3 moves right along y = 40 and passes over the migrasome's place (x = 62), leaving
    # it behind its rear at frame 5, when the migrasome is first seen; cell 4 sits below. In
    # the birth frame the fiber under the migrasome is handed to cell 4 (e.g. cell 3 merged
    # with it or missed in that frame); before the birth the fiber belonged to cell 3.
    cells, cf = _cells({3: [(40, 40 + 6 * t) for t in range(T)],
                        4: [(60, 62) for _ in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[:, 40, 50:66] = 5
    owner = [3, 3, 3, 3, 3, 4, -1, -1]
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 5, "cell_id": owner})
    mig = _mig(0, 40.0, 62.0, range(5, 8))
    out = _run(mig, fibers_tab, fib, cells, cf)
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "fiber_at_birth")
    # the birth frame alone (no vote over frames, no cover) picks the neighbour
    out = _run(mig, fibers_tab, fib, cells, cf, vote_frames=0, cover_weight=0.0)
    assert out.cell_id[0] == 4
    # the fiber owned by the neighbour in the birth frame only, nothing before: the cell
    # that covered the place most recently breaks the tie
    only_birth = fibers_tab.assign(cell_id=[-1, -1, -1, -1, -1, 4, -1, -1])
    out = _run(mig, only_birth, fib, cells, cf, cover_weight=1.5)
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "rear_path")


def test_geodesic_follows_the_fiber_to_its_cell():
    # one skeleton component holds two fibers that touch at x = 80: cell 1's fiber (x 30..80,
    # from its rear at x ~ 22) and cell 2's fiber (x 80..137, ending at cell 2's edge at x 138);
    # the fiber table gives the whole component to cell 2. A migrasome at x = 40 sits on cell
    # 1's part: walking along the skeleton reaches cell 1 first.
    cells, cf = _cells({1: [(40, 14) for _ in range(T)], 2: [(40, 146) for _ in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[:, 40, 23:138] = 7
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 7, "cell_id": 2})
    mig = _mig(0, 40.0, 40.0, range(3, 8))
    out = _run(mig, fibers_tab, fib, cells, cf, fiber_geodesic=True, cover_weight=0.0)
    assert (out.cell_id[0], out.assign_reason[0]) == (1, "fiber_at_birth")
    assert out.assign_distance_um[0] == pytest.approx(0.0)
    out = _run(mig, fibers_tab, fib, cells, cf, cover_weight=0.0)  # the table: cell 2
    assert out.cell_id[0] == 2
    # a fiber that reaches no cell gives no vote: nothing near -> not in view
    far = np.zeros_like(fib)
    far[:, 40, 60:100] = 7
    out = _run(_mig(0, 40.0, 80.0, range(3, 8)), fibers_tab, far, cells, cf,
               fiber_geodesic=True, rear_distance_um=2.0)
    assert (out.cell_id[0], out.assign_reason[0]) == (-1, "cell_not_in_view")


def test_cover_vote_outweighs_a_few_fiber_votes():
    # only the three first frames of the track see a fiber, owned by cell 4 (a neighbour
    # whose fiber crosses the place); cell 3's body covered the place up to the birth
    cells, cf = _cells({3: [(40, 40 + 6 * t) for t in range(T)],
                        4: [(62, 100) for _ in range(T)]})
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[5:, 40, 50:66] = 5
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 5, "cell_id": 4})
    mig = _mig(0, 40.0, 62.0, range(5, 8))
    out = _run(mig, fibers_tab, fib, cells, cf)  # default cover_weight: the cover decides
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "rear_path")
    out = _run(mig, fibers_tab, fib, cells, cf, cover_weight=1.0)
    assert (out.cell_id[0], out.assign_reason[0]) == (4, "fiber_at_birth")


def test_cell_seen_in_one_frame_gets_no_migrasome():
    # cell 3 moves right along y = 40 over the migrasome's place (x = 58; its rear leaves it
    # at frame 5); in the birth frame a blob (a piece cut off by the segmentation, cell 5)
    # sits on the migrasome, seen in that frame only: a segmentation artefact, not a cell
    cells, cf = _cells({3: [(40, 40 + 6 * t) for t in range(T)]})
    cells[5][_disk(40, 58, 4) & (cells[5] == 0)] = 5
    cf = pd.concat([cf, pd.DataFrame({"frame": [5], "cell_id": [5], "y_px": [40.0],
                                      "x_px": [58.0]})], ignore_index=True)
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[5:, 40, 52:60] = 2  # a fiber under the migrasome, attached only to the blob
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 2, "cell_id": 5})
    mig = _mig(0, 40.0, 58.0, range(5, 8))
    for geodesic in (False, True):
        out = _run(mig, fibers_tab, fib, cells, cf, fiber_geodesic=geodesic)
        assert (out.cell_id[0], out.assign_reason[0]) == (3, "rear_path")
        # counting one-frame cells as cells, with a cover vote weaker than the three fiber
        # votes, the blob takes it by its fiber; the geodesic walk finds no fiber outside
        # the blob near the migrasome, and cell 3's four frames of cover outvote the blob's one
        out = _run(mig, fibers_tab, fib, cells, cf, fiber_geodesic=geodesic, min_cell_frames=1,
                   cover_weight=2.0)
        assert out.cell_id[0] == (3 if geodesic else 5)
    # a movie of two frames: a cell seen in both is not transient
    two = _run(_mig(0, 40.0, 58.0, [1]), None, None, cells[4:6],
               cf[cf.frame.isin([4, 5])].assign(frame=lambda d: d.frame - 4),
               rear_lookback_frames=1)
    assert (two.cell_id[0], two.assign_reason[0]) == (3, "rear_path")


def test_vectorised_lookups_equal_the_per_point_definitions():
    # the many-points lookups (KD-tree over outlines / skeleton pixels) give exactly the
    # answers of the plain per-point crops, ties included, on random labels and points
    from migradetect import assign as a

    rng = np.random.default_rng(3)
    for trial in range(3):
        cells = np.zeros((70, 90), np.int32)
        for c in range(1, 6):
            cells[_disk_shape((70, 90), *rng.uniform(0, 80, 2), rng.uniform(4, 14))] = c
        fib = np.zeros_like(cells)
        for f in range(1, 8):  # straight fibers, some crossing, some under cells
            y0, x0 = rng.integers(0, 70), rng.integers(0, 90)
            n = int(rng.integers(10, 60))
            ang = rng.uniform(0, np.pi)
            yy = np.clip(np.round(y0 + np.arange(n) * np.sin(ang)).astype(int), 0, 69)
            xx = np.clip(np.round(x0 + np.arange(n) * np.cos(ang)).astype(int), 0, 89)
            fib[yy, xx] = f
        pts = np.column_stack([rng.uniform(-5, 75, 200), rng.uniform(-5, 95, 200)])
        pts[:20] = np.round(pts[:20])  # on pixel centres: exact ties
        for radius in (1.5, 7.0, 25.0):
            many = a._nearest_labels_many(cells, pts, radius)
            assert many == [a._nearest_labels(cells, p, radius) for p in pts]
            geo = a._geodesic(fib, cells, 2.0)
            many = a._geodesic_cells_at_many(geo, pts, radius)
            assert many == [a._geodesic_cell_at(geo, p, radius) for p in pts]
            fc = {(0, f): f % 3 - 1 for f in range(1, 8)}
            many = a._fiber_cells_many(fib, 0, pts, fc, radius)
            assert many == [a._fiber_cell(fib, 0, p, fc, radius) for p in pts]


def _disk_shape(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_cover_over_frames_outweighs_a_neighbour_label_on_the_tail():
    # cell 3 moves right along y = 40 and its body covers the place (x = 40) in frames 0-5;
    # in frames 5-6 the segmentation gives the piece of its tail over the place to cell 4 (a
    # neighbour sitting at x = 62). The migrasome is first seen at frame 6: the neighbour
    # covered the place most recently, but cell 3's body covered it over six frames
    cells, cf = _cells({3: [(40, 30 + 4 * t) for t in range(T)],
                        4: [(40, 66) for _ in range(T)]})
    for t in (5, 6):
        cells[t][_disk(40, 40, 3)] = 4
    mig = _mig(0, 40.0, 40.0, range(6, 8))
    out = _run(mig, None, None, cells, cf)
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "rear_path")
    # a fiber of the neighbour under the migrasome in its two frames does not overrule it
    fib = np.zeros((T, *SHAPE), np.int32)
    fib[6:, 40, 41:56] = 8
    fibers_tab = pd.DataFrame({"frame": range(T), "fiber_id": 8, "cell_id": 4})
    out = _run(mig, fibers_tab, fib, cells, cf)
    assert (out.cell_id[0], out.assign_reason[0]) == (3, "rear_path")
    # two cells with edges 0.5 µm either side of the place in every frame, no fiber: the
    # same evidence for both, ambiguous
    both, cf2 = _cells({1: [(40, 31) for _ in range(T)], 2: [(40, 49) for _ in range(T)]})
    out = _run(_mig(0, 40.0, 40.0, range(6, 8)), None, None, both, cf2)
    assert out.assign_reason[0] == "ambiguous" and out.cell_id[0] == -1
