"""The simulated scene: migrating cells, retraction fibers, migrasomes, intracellular puncta.

Private helper of :mod:`migradetect.synthetic`. Everything here lives in *dish* coordinates
(µm, ``(y, x)``, fixed on the coverslip) and time in minutes; the camera's view, drift and
pixels are applied by the renderer. The dynamics are run on a fine time grid that starts
before the first frame (a pre-roll), so that a movie opens with fibers and migrasomes
already present.

Model in short
--------------
* A cell moves in a persistent random walk: its heading turns with a smoothly varying
  angular velocity (an Ornstein-Uhlenbeck process), its speed fluctuates around a per-cell
  mean. Its outline is star-shaped around its centre: an egg-shaped ellipse elongated along
  the motion (broad lamella in front), a tapered retracting tail, and a few slowly rotating
  boundary modes.
* Adhesions form at random times on the rear edge and stay fixed on the dish. The fiber runs
  from the adhesion to the point of the cell edge it was made at (fixed in the cell's frame),
  so it lengthens as the cell moves on. Some fibers branch (a fixed junction on the fiber with
  a second, growing fiber to a second adhesion); each fiber breaks once it reaches its own
  breaking length and then stays where it was (fading slowly or not at all).
* Migrasomes are born, while their fiber is attached, at fiber tips (adhesions), branch tips,
  branch points and crossings, and are anchored there; each follows one of several growth
  laws (saturating exponential, logistic, growth then shrinkage, growth then rupture).
* Two migrasomes that exist at the same time are never closer than the sum of their maximum
  radii (they may touch at full size, never overlap); one that would be born where another
  already sits is not born. Pairs (frequent in crowded mode) touch: their centres are
  1.0-1.3x the sum of the maximum radii apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

GROWTH_LAWS = ("saturating", "logistic", "shrink", "rupture")


def _rot(v: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate (y, x) vectors by ``angle`` (radians, counter-clockwise in x-y)."""
    c, s = np.cos(angle), np.sin(angle)
    y, x = v[..., 0], v[..., 1]
    return np.stack([x * s + y * c, x * c - y * s], axis=-1)


@dataclass
class Cell:
    """One migrating cell: its trajectory on the fine time grid and its shape parameters."""

    cell_id: int
    t: np.ndarray  # min, fine grid
    centre: np.ndarray  # (n, 2) µm
    heading: np.ndarray  # (n,) rad, direction of motion (0 = +x)
    a_long: float  # µm, half length
    a_short: float  # µm, half width
    front: float  # broadening of the front
    tail: float  # elongation of the rear tail
    modes: np.ndarray  # (k, 3): order, amplitude, phase
    mode_rate: np.ndarray  # (k,) rad/min
    texture: np.ndarray  # (w, 3): ky, kx (rad/µm), phase
    nucleus: tuple[float, float, float]  # offset along (fraction of a_long), radii (fractions)

    def index(self, t: float) -> int:
        return int(np.clip(np.searchsorted(self.t, t - 1e-9), 0, len(self.t) - 1))

    def radius(self, phi: np.ndarray, t: float) -> np.ndarray:
        """Distance (µm) from the centre to the edge at angle ``phi`` from the heading."""
        a = self.a_long
        b = self.a_short * (1.0 + self.front * np.cos(phi))
        r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
        dphi = np.angle(np.exp(1j * (phi - np.pi)))
        r = r * (1.0 + self.tail * np.exp(-0.5 * (dphi / 0.3) ** 2))
        wobble = np.ones_like(r)
        for (order, amp, phase), rate in zip(self.modes, self.mode_rate):
            wobble = wobble + amp * np.cos(order * phi + phase + rate * t)
        return r * wobble

    def edge_point(self, phi: float, t: float) -> np.ndarray:
        """Dish position (µm) of the edge at angle ``phi`` from the heading at time ``t``."""
        i = self.index(t)
        th = self.heading[i]
        r = float(self.radius(np.array(phi), t))
        return self.centre[i] + r * np.array([math.sin(th + phi), math.cos(th + phi)])

    def inside(self, p: np.ndarray, t: float) -> bool:
        i = self.index(t)
        d = p - self.centre[i]
        phi = math.atan2(d[0], d[1]) - self.heading[i]
        return bool(math.hypot(d[0], d[1]) < float(self.radius(np.array(phi), t)))


@dataclass
class Fiber:
    """A retraction fiber: adhesion ``a`` (dish-fixed) to the cell edge at angle ``phi``."""

    fiber_id: int
    cell_id: int
    t_create: float
    phi: float
    a: np.ndarray
    break_length: float
    fade_tau: float  # min; inf = does not fade
    branch_at: float | None  # fiber length (µm) at which it branches; None = never
    branch_frac: float = 0.5
    branch_angle: float = 0.5
    branch_length: float = 3.0
    t_out: float | None = None  # first time the adhesion lies outside the cell
    t_branch: float | None = None
    junction: np.ndarray | None = None
    a2: np.ndarray | None = None
    t_break: float = math.inf
    b_break: np.ndarray | None = None
    discarded: bool = False
    birth_length: float = 2.0  # µm, length at which its tip migrasome is scheduled
    radius_um: float = 0.05  # µm, tube radius (width 50-200 nm)
    brightness: float = 1.0

    def polylines(self, cell: Cell, t: float) -> tuple[list[np.ndarray], float, int]:
        """Polylines (each (k, 2) µm) at time ``t``, brightness factor and cell id (-1 broken)."""
        if self.discarded or self.t_out is None or t < self.t_out:
            return [], 0.0, -1
        attached = t < self.t_break
        b = cell.edge_point(self.phi, t) if attached else self.b_break
        main = [self.a]
        lines = []
        if self.t_branch is not None and t >= self.t_branch:
            main.append(self.junction)
            grow = min(1.0, (t - self.t_branch) / 2.0)
            tip = self.junction + grow * (self.a2 - self.junction)
            lines.append(np.array([self.junction, tip]))
        main.append(b)
        lines.insert(0, np.array(main))
        alpha = 1.0 if attached else math.exp(-(t - self.t_break) / self.fade_tau)
        return lines, alpha, self.cell_id if attached else -1


@dataclass
class Migrasome:
    """An anchored migrasome and its growth law (times in min, sizes in µm)."""

    track_id: int
    cell_id: int
    pos: np.ndarray
    t0: float
    law: str
    d_max: float
    tau: float
    site: str
    brightness: float
    shell_um: float
    lag: float = 0.0  # logistic: time from birth to the midpoint
    t_change: float = math.inf  # shrink: start of shrinkage; rupture: time of rupture
    shrink_to: float = 1.0
    shrink_tau: float = 5.0

    def diameter(self, t: np.ndarray) -> np.ndarray:
        """Diameter (µm) at times ``t`` (min); 0 before birth and after rupture."""
        t = np.asarray(t, dtype=float)
        dt = np.maximum(t - self.t0, 0.0)
        if self.law == "logistic":
            k = self.tau / 2.0
            l0 = 1.0 / (1.0 + math.exp(self.lag / k))
            d = self.d_max * (1.0 / (1.0 + np.exp(-(dt - self.lag) / k)) - l0) / (1.0 - l0)
        else:
            d = self.d_max * (1.0 - np.exp(-dt / self.tau))
        if self.law == "shrink":
            tc = self.t_change
            d_c = self.d_max * (1.0 - math.exp(-(tc - self.t0) / self.tau))
            fall = np.exp(-(t - tc) / self.shrink_tau)
            late = d_c * (self.shrink_to + (1 - self.shrink_to) * fall)
            d = np.where(t > tc, late, d)
        d = np.where(t > self.t0, d, 0.0)
        if self.law == "rupture":
            d = np.where(t >= self.t_change, 0.0, d)
        return d

    def growth_summary(self) -> tuple[float, float]:
        """(peak diameter µm, time from birth to 90 % of the peak, min) of the true curve.

        The peak is the curve's supremum (``d_max`` for the saturating and logistic laws,
        the diameter when shrinkage or rupture starts otherwise); the diameter rises
        monotonically until then, so the 90 % time is the single root of d(t) - 0.9 peak.
        """
        if self.law in ("saturating", "logistic"):
            peak, t_end = self.d_max, self.t0 + 200.0 * self.tau
        else:
            t_end = self.t_change
            peak = self.d_max * (1.0 - math.exp(-(t_end - self.t0) / self.tau))
        if self.law == "saturating":
            return peak, self.tau * math.log(10.0)
        t90 = optimize.brentq(lambda t: float(self.diameter(np.array([t]))[0]) - 0.9 * peak,
                              self.t0 + 1e-9, t_end - 1e-9, xtol=1e-6)
        return peak, float(t90 - self.t0)


@dataclass
class Punctum:
    """An intracellular vesicle moving with its cell (a confounder, not a migrasome)."""

    punctum_id: int
    cell_id: int
    rho: np.ndarray  # (n,) fraction of the cell radius, fine grid
    phi: np.ndarray  # (n,) angle from the heading
    diameter_um: float
    brightness: float


@dataclass
class Scene:
    cells: list[Cell]
    fibers: list[Fiber]
    migrasomes: list[Migrasome]
    puncta: list[Punctum]
    t_frames: np.ndarray  # min
    crossings: int = 0
    notes: dict = field(default_factory=dict)


def _walk(rng: np.random.Generator, t: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Persistent random walk (µm, rad) on the time grid ``t`` (min) starting at the origin."""
    n = len(t)
    speed0 = rng.uniform(0.3, 1.5)  # µm/min
    persistence = rng.uniform(10.0, 40.0)  # min
    tau_w = 3.0
    sigma_w = math.sqrt(2.0 / persistence) / tau_w
    theta = np.empty(n)
    theta[0] = rng.uniform(-np.pi, np.pi)
    omega, ds = 0.0, 0.0
    pos = np.zeros((n, 2))
    for i in range(1, n):
        omega += -omega * h / tau_w + sigma_w * math.sqrt(h) * rng.normal()
        ds += -ds * h / 5.0 + 0.15 * math.sqrt(h / 2.5) * rng.normal()
        theta[i] = theta[i - 1] + omega * h
        v = speed0 * max(0.2, 1.0 + ds)
        pos[i] = pos[i - 1] + v * h * np.array([math.sin(theta[i]), math.cos(theta[i])])
    return pos, theta


def _make_cell(rng, cell_id, t, h, place, n_modes=4) -> Cell:
    pos, theta = _walk(rng, t, h)
    length = rng.uniform(15.0, 40.0)
    a_long = length / 2 / 1.25
    orders = rng.choice(np.arange(2, 7), size=n_modes, replace=False)
    amps, phases = rng.uniform(0.01, 0.06, n_modes), rng.uniform(0, 2 * np.pi, n_modes)
    modes = np.column_stack([orders, amps, phases])
    waves = rng.uniform(2 * np.pi / 8, 2 * np.pi / 3, (4, 1)) * np.column_stack(
        [np.sin(a := rng.uniform(0, np.pi, 4)), np.cos(a)]
    )
    texture = np.column_stack([waves, rng.uniform(0, 2 * np.pi, 4)])
    nucleus = (rng.uniform(-0.35, -0.1), rng.uniform(0.25, 0.35), rng.uniform(0.35, 0.5))
    cell = Cell(
        cell_id=cell_id, t=t, centre=pos, heading=theta, a_long=a_long,
        a_short=a_long * rng.uniform(0.45, 0.75), front=rng.uniform(0.05, 0.3),
        tail=rng.uniform(0.1, 0.45), modes=modes, mode_rate=rng.normal(0, 0.03, n_modes),
        texture=texture, nucleus=nucleus,
    )
    cell.centre = cell.centre - cell.centre[place[0]] + place[1]
    return cell


def _place_cells(rng, n_cells, extent, mid_index, t, h) -> list[Cell]:
    """Cells whose positions at the middle frame are spread over the field of view."""
    best = None
    for _ in range(30):
        pts = rng.uniform(0.2, 0.8, (n_cells, 2)) * extent
        gaps = [np.linalg.norm(p - q) for i, p in enumerate(pts) for q in pts[i + 1:]]
        dmin = min(gaps, default=1e9)
        if best is None or dmin > best[0]:
            best = (dmin, pts)
    cells = [_make_cell(rng, i + 1, t, h, (mid_index, best[1][i])) for i in range(n_cells)]
    _contact_inhibition(cells, mid_index)
    return cells


def _mean_radius(cell: Cell) -> float:
    """Mean centre-to-edge distance (µm) of a cell's outline."""
    return float(np.mean(cell.radius(np.linspace(-np.pi, np.pi, 72, endpoint=False), 0.0)))


def _contact_inhibition(cells: list[Cell], start: int) -> None:
    """Keep cells from crawling over each other (contact inhibition of locomotion).

    Cultured migrating cells do not pile up: on contact they stop and turn away. Two cells
    whose centres come closer than the sum of their mean radii are pushed apart along the
    line between them, and the push carries on to the rest of their paths (forwards from the
    middle frame, where the cells were spread over the field, and backwards before it). The
    walks were drawn before, so no random numbers are used here and the other parts of a seed's
    scene stay as they were. Cells may still touch at their tails; their bodies stay apart.
    """
    if len(cells) < 2:
        return
    need = np.array([_mean_radius(c) for c in cells])
    n = len(cells[0].t)
    for order in (range(start + 1, n), range(start - 1, -1, -1)):
        step = 1 if order.step > 0 else -1
        for i in order:
            for a in range(len(cells)):
                for b in range(a + 1, len(cells)):
                    ca, cb = cells[a].centre, cells[b].centre
                    d = ca[i] - cb[i]
                    dist = float(np.hypot(d[0], d[1]))
                    gap = need[a] + need[b] - dist
                    if gap <= 0:
                        continue
                    u = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    push = 0.5 * gap * u
                    sl = slice(i, None) if step > 0 else slice(0, i + 1)
                    ca[sl] += push
                    cb[sl] -= push


def _new_migrasome(rng, track_id, cell_id, pos, t0, site, law, shell_um, marker) -> Migrasome:
    d_max = float(np.clip(math.exp(rng.normal(math.log(1.25), 0.35)), 0.5, 3.0))
    tau = rng.uniform(1.0, 5.0)
    bright = rng.uniform(0.7, 1.3) if marker == "tspan4_gfp" else rng.uniform(0.85, 1.15)
    m = Migrasome(track_id, cell_id, np.asarray(pos, float), t0, law, d_max, tau, site, bright,
                  shell_um)
    if law == "logistic":
        m.lag = rng.uniform(1.0, 2.5) * tau
    elif law == "shrink":
        m.t_change = t0 + rng.uniform(3.0, 6.0) * tau
        m.shrink_to, m.shrink_tau = rng.uniform(0.4, 0.8), rng.uniform(3.0, 10.0)
    elif law == "rupture":
        m.t_change = t0 + rng.uniform(2.0, 8.0) * tau
    return m


def _lifetime(mg: Migrasome) -> tuple[float, float]:
    """(birth, end) of a migrasome in min; only a rupture ends one before the movie does."""
    return mg.t0, (mg.t_change if mg.law == "rupture" else math.inf)


def _has_room(mg: Migrasome, others: list[Migrasome]) -> bool:
    """Whether ``mg`` is at least the sum of the two maximum radii (``d_max / 2``) away from
    every migrasome in ``others`` whose lifetime overlaps its own.

    Two vesicles cannot occupy the same place: they may touch at full size, never overlap.
    Checked at placement against every migrasome placed so far (also those later dropped
    because their fiber broke first, which only makes the rule stricter).
    """
    if not others:
        return True
    born, end = _lifetime(mg)
    life = np.array([_lifetime(o) for o in others])
    pos = np.array([o.pos for o in others])
    d_max = np.array([o.d_max for o in others])
    together = (life[:, 0] < end) & (born < life[:, 1])
    gap = np.hypot(*(pos - mg.pos).T)
    return bool(np.all(~together | (gap >= (d_max + mg.d_max) / 2 - 1e-9)))


def _crossings(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All proper crossings among segments ``p[k]-q[k]`` (each (n, 2)).

    Returns index arrays ``i < j`` of crossing pairs and their intersection points (m, 2).
    """
    r = q - p
    den = r[:, None, 0] * r[None, :, 1] - r[:, None, 1] * r[None, :, 0]
    w = p[None, :, :] - p[:, None, :]  # w[i, j] = p_j - p_i
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (w[..., 0] * r[None, :, 1] - w[..., 1] * r[None, :, 0]) / den
        v = (w[..., 0] * r[:, None, 1] - w[..., 1] * r[:, None, 0]) / den
    ok = (np.abs(den) > 1e-9) & (u > 0.02) & (u < 0.98) & (v > 0.02) & (v < 0.98)
    ok = np.triu(ok, 1)
    i, j = np.nonzero(ok)
    return i, j, p[i] + u[i, j][:, None] * r[i]


def build_scene(rng: np.random.Generator, *, extent_um: np.ndarray, n_cells: int,
                t_frames: np.ndarray, crowded: bool, marker: str, shell_um: float) -> Scene:
    """Run the dynamics from a pre-roll before the first frame to the last frame.

    ``t_frames`` are the frame times in minutes (0-based); ``extent_um`` the field of view
    ``(height, width)`` in µm at frame 0.
    """
    interval = float(t_frames[1] - t_frames[0]) if len(t_frames) > 1 else 1.0
    m = max(1, math.ceil(interval / 0.25))
    h = interval / m
    n_pre = m * math.ceil(25.0 / interval)
    t = (np.arange(n_pre + (len(t_frames) - 1) * m + 1) - n_pre) * h
    mid = n_pre + (len(t_frames) // 2) * m
    cells = _place_cells(rng, n_cells, np.asarray(extent_um, float), mid, t, h)
    rate = 0.6 if crowded else 0.3  # adhesions per min per cell
    p_tip, p_pair = (0.95, 0.35) if crowded else (0.7, 0.08)
    fibers: list[Fiber] = []
    migrasomes: list[Migrasome] = []
    laws = list(GROWTH_LAWS)
    rng.shuffle(laws)

    def add_migrasome(cell_id, pos, t0, site, direction, fiber=None):
        law = laws[len(migrasomes)] if len(migrasomes) < len(laws) else str(
            rng.choice(GROWTH_LAWS, p=[0.45, 0.3, 0.15, 0.1]))
        mg = _new_migrasome(rng, len(migrasomes) + 1, cell_id, pos, t0, site, law, shell_um, marker)
        partner = None
        if rng.uniform() < p_pair:
            law2 = str(rng.choice(GROWTH_LAWS, p=[0.45, 0.3, 0.15, 0.1]))
            t_pair = t0 + rng.uniform(-1, 2)
            partner = _new_migrasome(rng, len(migrasomes) + 2, cell_id, pos, t_pair, "pair", law2,
                                     shell_um, marker)
            # touching at full size: centre distance 1.0-1.3x the sum of the maximum radii
            gap = (mg.d_max + partner.d_max) / 2 * rng.uniform(1.0, 1.3)
            partner.pos = mg.pos + gap * direction
        # The random numbers are drawn before the checks, so that a migrasome left out does
        # not change the rest of the scene.
        if not _has_room(mg, migrasomes):
            return  # a vesicle already sits there: no second one in the same place
        migrasomes.append(mg)
        parent[id(mg)] = fiber
        if partner is not None and _has_room(partner, migrasomes):
            migrasomes.append(partner)
            parent[id(partner)] = fiber

    parent: dict[int, Fiber | None] = {}  # migrasome -> the fiber it must be born on
    pending: list[tuple[Fiber, str]] = []  # (fiber, site) migrasomes waiting for their fiber
    for i in range(1, len(t)):
        ti = t[i]
        for cell in cells:
            if rng.uniform() < rate * h:
                phi = math.pi + rng.normal(0.0, 0.45)
                f = Fiber(
                    fiber_id=len(fibers) + 1, cell_id=cell.cell_id, t_create=ti, phi=phi,
                    a=cell.edge_point(phi, ti), break_length=rng.uniform(6.0, 30.0),
                    fade_tau=math.inf if rng.uniform() < 0.5 else rng.uniform(10.0, 40.0),
                    branch_at=rng.uniform(3.0, 8.0) if rng.uniform() < 0.3 else None,
                    branch_frac=rng.uniform(0.3, 0.7),
                    branch_angle=rng.choice([-1, 1]) * rng.uniform(0.35, 1.0),
                    branch_length=rng.uniform(2.0, 6.0), birth_length=rng.uniform(1.0, 4.0),
                    radius_um=rng.uniform(0.025, 0.1), brightness=rng.uniform(0.7, 1.3),
                )
                fibers.append(f)
                if rng.uniform() < p_tip:
                    pending.append((f, "tip"))
        for f in fibers:
            if f.discarded or ti >= f.t_break or ti <= f.t_create:
                continue
            cell = cells[f.cell_id - 1]
            if f.t_out is None:
                gap = np.linalg.norm(cell.edge_point(f.phi, ti) - f.a)
                if not cell.inside(f.a, ti) and gap > 0.3:
                    f.t_out = ti
                elif ti - f.t_create > 10.0:
                    f.discarded = True
                continue
            b = cell.edge_point(f.phi, ti)
            pts = [f.a] + ([f.junction] if f.junction is not None else []) + [b]
            length = sum(np.linalg.norm(q - p) for p, q in zip(pts[:-1], pts[1:]))
            if f.branch_at is not None and f.t_branch is None and length >= f.branch_at:
                f.t_branch = ti
                f.junction = f.a + f.branch_frac * (b - f.a)
                back = (f.a - f.junction) / max(np.linalg.norm(f.a - f.junction), 1e-6)
                f.a2 = f.junction + f.branch_length * _rot(back, f.branch_angle)
                if rng.uniform() < 0.6:
                    t_b = ti + 2.0 + rng.uniform(0, 2)
                    add_migrasome(f.cell_id, f.a2, t_b, "branch_tip", back, f)
                if rng.uniform() < 0.5:
                    t_b = ti + rng.uniform(0, 3)
                    add_migrasome(f.cell_id, f.junction, t_b, "branch_point", back, f)
            for pf, site in list(pending):
                if pf is f and length >= f.birth_length:
                    pending.remove((pf, site))
                    direction = (b - f.a) / max(np.linalg.norm(b - f.a), 1e-6)
                    add_migrasome(f.cell_id, f.a, ti + rng.uniform(0, 2), site, direction, f)
            if length >= f.break_length:
                f.t_break, f.b_break = ti, b
    # crossings, checked at frame spacing from the start of the pre-roll
    seen: set = set()
    n_cross = 0
    for ti in t[::m]:
        segs = []
        for f in fibers:
            if f.discarded or f.t_out is None or ti < f.t_out:
                continue
            lines, _, cid = f.polylines(cells[f.cell_id - 1], ti)
            for line in lines:
                for p, q in zip(line[:-1], line[1:]):
                    segs.append((f, cid, p, q))
        if len(segs) < 2:
            continue
        starts, ends = np.array([sg[2] for sg in segs]), np.array([sg[3] for sg in segs])
        ii, jj, points = _crossings(starts, ends)
        for i, j, x in zip(ii, jj, points):
            (f, cid, p, q), (g, cid2, _, _) = segs[i], segs[j]
            if g is f:
                continue
            key = (min(f.fiber_id, g.fiber_id), max(f.fiber_id, g.fiber_id))
            if key in seen:
                continue
            seen.add(key)
            n_cross += 1
            attached = f if cid > 0 else g if cid2 > 0 else None
            if attached is not None and rng.uniform() < 0.3:
                direction = (q - p) / np.linalg.norm(q - p)
                t_x = ti + rng.uniform(0, 1)
                add_migrasome(attached.cell_id, x, t_x, "crossing", direction, attached)
    # a migrasome is born while its fiber is attached, and before the last frame
    keep = []
    for mg in migrasomes:
        f = parent[id(mg)]
        if mg.t0 <= t[-1] and (f is None or mg.t0 < f.t_break):
            keep.append(mg)
    for k, mg in enumerate(keep):
        mg.track_id = k + 1
    puncta = _make_puncta(rng, cells, t, marker)
    shown = [f for f in fibers if not f.discarded and f.t_out is not None]
    notes = {"fine_step_min": h, "pre_roll_min": n_pre * h, "shell_um": shell_um}
    return Scene(cells, shown, keep, puncta, np.asarray(t_frames, float), crossings=n_cross,
                 notes=notes)


def _make_puncta(rng, cells, t, marker) -> list[Punctum]:
    """3-8 intracellular vesicles per cell, drifting slowly in the cell's frame."""
    out = []
    n = len(t)
    for cell in cells:
        for _ in range(int(rng.integers(3, 9))):
            steps = rng.normal(0, 0.01, (n, 2)).cumsum(axis=0)
            rho = np.clip(rng.uniform(0.15, 0.6) + steps[:, 0], 0.05, 0.7)
            phi = rng.uniform(-np.pi, np.pi) + 3 * steps[:, 1]
            bright = rng.uniform(0.3, 1.0) if marker == "tspan4_gfp" else rng.uniform(0.5, 1.2)
            diameter = rng.uniform(0.25, 0.6)
            out.append(Punctum(len(out) + 1, cell.cell_id, rho, phi, diameter, bright))
    return out
