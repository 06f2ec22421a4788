"""Cell identities through glued frames (track_cells_split) on hand-made label stacks."""

from __future__ import annotations

import numpy as np
import pytest

from migradetect.celltracking import (
    apply_splits,
    relabel,
    track_cells,
    track_cells_split,
    write_splits,
)

SHAPE = (60, 150)
PX = 0.5  # µm per pixel: the default core (3 µm) is 6 px


def _disk(cy, cx, r):
    yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _glued_stack(glued=(4, 5, 6)):
    """Cell A (r 14) moves right, cell B (r 12) moves left; they touch and are segmented as
    one label in the ``glued`` frames (bridged), apart in the others."""
    xs_a = [20, 23, 26, 29, 32, 34, 32, 29, 26]
    xs_b = [68, 67, 66, 65, 60, 60, 60, 65, 66]
    stack = np.zeros((len(xs_a), *SHAPE), np.int32)
    for t, (xa, xb) in enumerate(zip(xs_a, xs_b)):
        a, b = _disk(30, xa, 14), _disk(30, xb, 12)
        if t in glued:
            stack[t][a | b] = 3
            stack[t][26:35, xa:xb] = 3
        else:
            stack[t][a] = 1
            stack[t][b] = 2
    return stack, xs_a, xs_b


def _relabelled(stack, mapping, splits):
    return np.stack([relabel(stack[t], mapping, frame=t, splits=splits)
                     for t in range(len(stack))])


def _check_two_cells(stack, mapping, cf, splits, xs_a, xs_b):
    out = _relabelled(stack, mapping, splits)
    id_a, id_b = out[-1, 30, xs_a[-1]], out[-1, 30, xs_b[-1]]
    assert id_a != id_b and id_a > 0 and id_b > 0
    for t in range(len(stack)):
        # each cell's centre keeps its own id, before, during and after the glued frames
        assert out[t, 30, xs_a[t]] == id_a and out[t, 30, xs_b[t]] == id_b
        assert set(np.unique(out[t])) == {0, id_a, id_b}
        assert ((out[t] > 0) == (stack[t] > 0)).all()  # the split only re-colours pixels
    assert cf.cell_id.nunique() == 2 and len(cf) == 2 * len(stack)  # both cells every frame
    # the centroids of the split parts follow the true centres (the bridge moves them a bit)
    for cid, xs in ((id_a, xs_a), (id_b, xs_b)):
        g = cf[cf.cell_id == cid].sort_values("frame")
        assert np.allclose(g.x_px.to_numpy(), xs, atol=4.0)


def test_glued_label_is_split_between_the_two_cells():
    stack, xs_a, xs_b = _glued_stack()
    mapping, cf, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert sorted(splits) == [4, 5, 6]
    _check_two_cells(stack, mapping, cf, splits, xs_a, xs_b)
    # the backward pass splits only cells glued up to the first frame: here it adds nothing
    m_b, cf_b, splits_b = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                            backward=True)
    assert m_b.equals(mapping) and cf_b.equals(cf) and sorted(splits_b) == [4, 5, 6]
    # without splitting, the glued label is one cell and the other waits
    _, cf2 = track_cells(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert len(cf2[cf2.frame.isin([4, 5, 6])]) == 3
    assert cf2.cell_id.nunique() == 2


def test_cells_glued_from_the_first_frame_are_split_by_the_backward_pass():
    stack, xs_a, xs_b = _glued_stack(glued=(0, 1, 2))
    mapping, cf, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                            backward=True)
    assert sorted(splits) == [0, 1, 2]
    _check_two_cells(stack, mapping, cf, splits, xs_a, xs_b)
    _, _, forward_only = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert forward_only == {}  # nothing to carry forward from: the cells were never apart


def test_write_splits_makes_the_lookup_table_enough():
    stack, xs_a, xs_b = _glued_stack(glued=(0, 1, 5))
    mapping, cf, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                            backward=True)
    assert sorted(splits) == [0, 1, 5]
    _check_two_cells(stack, mapping, cf, splits, xs_a, xs_b)
    written = stack.copy()
    write_splits(written, splits)
    for t in range(len(stack)):
        assert np.array_equal(relabel(written[t], mapping, frame=t),
                              relabel(stack[t], mapping, frame=t, splits=splits))
        assert np.array_equal(written[t], apply_splits(stack[t], splits.get(t, [])))
    assert (written != stack).any() and (stack[stack != written] == 3).all()


def test_a_piece_that_melts_into_its_neighbour_is_let_go():
    # a blob B apart from cell A for 4 frames, then glued to A while it shrinks (r 12 -> 4):
    # it is held apart only while it keeps half its area
    radii = [12, 12, 12, 12, 11, 10, 7, 5, 4]
    stack = np.zeros((len(radii), *SHAPE), np.int32)
    for t, r in enumerate(radii):
        a = _disk(30, 40, 14)
        if t < 4:
            stack[t][a] = 1
            stack[t][_disk(30, (82, 78, 74, 70)[t], r)] = 2  # 4 px apart at frame 3
        else:
            stack[t][a | _disk(30, 54 + r, r)] = 1
    _, cf, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert sorted(splits) == [4, 5]  # areas 0.84 and 0.69 of B's; 0.34 at r 7
    assert cf.groupby("frame").size().to_dict() == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2,
                                                    6: 1, 7: 1, 8: 1}


def test_a_thin_piece_without_a_core_is_not_split_off():
    # a fan-like strip (8 px = 4 µm wide: no point 3 µm from its edge) apart from the cell,
    # then touching it: never held apart, whatever its area
    stack = np.zeros((8, *SHAPE), np.int32)
    for t in range(8):
        stack[t][_disk(30, 40, 14)] = 1
        x0 = 70 if t < 4 else 54
        stack[t][26:34, x0:x0 + 60] = 2 if t < 4 else 1
    _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert splits == {}
    _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                     core_um=1.0)
    assert sorted(splits) == [4, 5, 6, 7]  # the same strip with a smaller core rule


def test_only_cells_that_came_into_view_are_held_apart():
    # B appears at frame 2 in the middle of the field, apart from A for 4 frames, then glued to
    # it: an object that appears out of nothing is not held apart (entered_only); the same B
    # entering through the frame's right edge is
    for xs_b, expect in (([0, 0, 94, 86, 78, 70, 66, 64], []),
                         ([0, 0, 144, 118, 94, 70, 66, 64], [6, 7])):
        stack = np.zeros((8, *SHAPE), np.int32)
        for t in range(8):
            a = _disk(30, 40, 14)
            if t >= 2 and t < 6:
                stack[t][a] = 1
                stack[t][_disk(30, xs_b[t], 12)] = 2
            elif t >= 6:
                stack[t][a | _disk(30, xs_b[t], 12)] = 1
            else:
                stack[t][a] = 1
        _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
        assert sorted(splits) == expect
        _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                         entered_only=False)
        assert sorted(splits) == [6, 7]


def test_piece_cut_off_a_cell_is_not_split_off_again():
    # one cell (r 16) over-segmented into two labels in frames 1-4 (the piece is born inside
    # its last mask), whole again from frame 5: the piece must not be kept alive by splitting
    stack = np.zeros((8, *SHAPE), np.int32)
    for t in range(8):
        cell = _disk(30, 40 + 3 * t, 16)
        stack[t][cell] = 1
        if 1 <= t <= 4:
            stack[t][cell & (np.arange(SHAPE[1]) > 44 + 3 * t)[None, :]] = 2
    _, cf, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    assert splits == {}
    assert cf[cf.frame >= 5].cell_id.nunique() == 1


def test_cells_apart_too_briefly_or_tracked_too_short_are_not_split():
    stack, _, _ = _glued_stack()
    _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                     min_frames_to_split=6)
    assert splits == {}  # the cells were seen apart for only 4 frames before gluing
    _, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0,
                                     apart_frames=5)
    assert splits == {}
    mapping, cf, splits = track_cells_split(np.zeros((3, 10, 10), np.int32), pixel_size_um=1.0,
                                            frame_interval_s=1.0)
    assert len(mapping) == 0 and len(cf) == 0 and splits == {}


def test_split_matches_plain_tracking_without_glue():
    # no glued frame: identical to track_cells
    stack = np.zeros((5, *SHAPE), np.int32)
    for t in range(5):
        stack[t][_disk(20, 20 + 5 * t, 8)] = 4
        stack[t][_disk(40, 120 - 5 * t, 8)] = 9
    m1, c1 = track_cells(stack, pixel_size_um=PX, frame_interval_s=10.0)
    m2, c2, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=10.0)
    assert splits == {}
    assert m1.equals(m2) and c1.equals(c2)


def test_relabel_splits_need_the_frame():
    stack, _, _ = _glued_stack()
    mapping, _, splits = track_cells_split(stack, pixel_size_um=PX, frame_interval_s=30.0)
    merged = relabel(stack[5], mapping, frame=5)  # no splits given: one id on the label
    assert len(np.unique(merged)) == 2
    assert len(np.unique(relabel(stack[5], mapping, frame=5, splits=splits))) == 3
    with pytest.raises(TypeError):
        relabel(stack[5], mapping, 5)  # frame is keyword-only
