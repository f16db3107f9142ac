"""Procedural street scenes: the embedded default data set, generated on the fly, no download.

Each scene is a camera driving down a street, rendered with a pinhole camera over a ground plane: sky, building façades
with windows on both sides converging to a vanishing point, a road with lane marks, kerbs and sidewalks, grass verges,
trees, fences, parked and moving cars, pedestrians, bicyclists, thin poles with street lamps and small signs. The label
set is CamVid's 11 classes in its train-id order (see :data:`CLASS_NAMES`), so models and plots carry over to CamVid.

What makes the scenes hard in the ways real street scenes are hard:

- textures that overlap between classes (pavement vs road, light façades vs overcast sky, panel fences vs façades,
  grey sign backs vs poles, pedestrians vs bicyclists, grass verges and tree crowns are both ``Tree``);
- global lighting (gain, gamma, colour temperature), sun and shadow sides, shadows cast across class boundaries;
- occlusion (objects painted far to near), thin objects (poles at least one pixel wide, lamp arms, bicycle wheels) and
  small objects (signs, far pedestrians);
- a slightly blurred image (camera optics) and annotation noise: along class boundaries, coherent stretches of the label
  are set to ``IGNORE_INDEX`` or shifted by one pixel, as sloppy polygons do.

The scenes are as cluttered as CamVid's: the numbers of poles, signs, fences, cars, pedestrians and cyclists per
scene were set so that at 96x128 each of these classes covers within a factor of 1.6 of its share of CamVid's
training frames (measured: pole 0.9% vs 1.0%, sign 1.3% vs 1.2%, fence 1.1% vs 1.1%, car 5.2% vs 5.9%, pedestrian
0.5% vs 0.6%, bicyclist 0.3% vs 0.3%; ``tests/test_data_synthetic.py`` checks it when CamVid is on disk).

A scene is a pure function of ``(seed, split, index)``: its layout and textures come from a NumPy generator seeded with
``SeedSequence([seed, split_id, index])``, so splits are disjoint streams and the same call is bit-for-bit repeatable.
The layout is drawn independently of the resolution, so one scene rendered at (96, 128) and at (360, 480) shows the
same street. Geometry is defined for a 4:3 frame; other aspect ratios stretch it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import torch
from torch.utils.data import Dataset

from segcal_lib.config import get_profile
from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.shifts import SHIFTS, apply_shift, image_seed

#: CamVid's 11 classes in train-id order (SegNet tutorial); 255 is ignore.
CLASS_NAMES: tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                                "Pedestrian", "Bicyclist")
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(len(CLASS_NAMES))
NUM_CLASSES = len(CLASS_NAMES)

#: uint8 (11, 3) RGB colours of the label maps, CamVid's colours as in the SegNet tutorial.
PALETTE: np.ndarray = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0], [192, 128, 128],
     [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]], dtype=np.uint8)

#: Split name -> id mixed into the seed. ``"cal"`` is an alias of ``"val"`` (the paper fits calibrators on validation).
SPLIT_IDS: dict[str, int] = {"train": 1, "val": 2, "test": 3}
SPLIT_ALIASES: dict[str, str] = {"cal": "val"}


def canonical_split(split: str) -> str:
    """Resolve aliases (``"cal"`` -> ``"val"``) and validate a split name."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS) + sorted(SPLIT_ALIASES)}, got {split!r}")
    return split


# ----------------------------------------------------------------------------------------------------------- canvas

@dataclass(frozen=True)
class _Camera:
    """Pinhole camera 1 unit above the ground (world units are camera heights, about 1.2 m).

    Normalised image coordinates: x, y in [0, 1], y pointing down.

    A world point (X lateral, Y up, Z depth) projects to x = x_v + fx X / Z, y = y_h + f (1 - Y) / Z.
    """

    y_h: float  # horizon row
    x_v: float  # vanishing-point column
    f: float
    fx: float


@lru_cache(maxsize=64)
def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and its complementary weight for linear resampling of n_in samples to n_out (pixel-centre
    aligned)."""
    pos = np.clip((np.arange(n_out) + 0.5) / n_out * n_in - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def _field(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Upsample a small random grid to a smooth (h, w) float32 field, normalised to zero mean and unit std.

    Separable linear interpolation by gathers: no BLAS call, whose threads stall on a busy two-core machine.
    """
    lo, wy = _interp_weights(h, grid.shape[0])
    rows = np.take(grid, lo, axis=0) * (1 - wy)[:, None] + np.take(grid, lo + 1, axis=0) * wy[:, None]
    lo, wx = _interp_weights(w, grid.shape[1])
    out = np.take(rows, lo, axis=1) * (1 - wx) + np.take(rows, lo + 1, axis=1) * wx
    out -= out.mean()
    return out / max(float(out.std()), 1e-6)


class _Canvas:
    """A scene being painted back to front: per pixel a label, a material and a shade; colours are resolved at the end.

    A material is a base colour and the amplitudes of three noise fields (fine, medium, coarse) that give a class its
    texture; material 0 is the background (the sky image ``bg``, (3, H, W)). Painting only writes small integers and
    floats, and :meth:`compose` turns the whole frame into colours in one vectorised pass, which keeps small scenes
    fast.
    """

    def __init__(self, h: int, w: int, cam: _Camera, noise: dict[str, np.ndarray]):
        self.h, self.w, self.cam, self.noise = h, w, cam, noise
        self.ys = (np.arange(h, dtype=np.float32) + 0.5) / h
        self.xs = (np.arange(w, dtype=np.float32) + 0.5) / w
        self.bg = np.zeros((3, h, w), np.float32)
        self.mat = np.zeros((h, w), np.int32)
        self.shade = np.ones((h, w), np.float32)
        self.lbl = np.full((h, w), SKY, np.uint8)
        self._rgb: list[np.ndarray] = [np.zeros((1, 3), np.float32)]
        self._tex: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self._rows: list[int] = [1]  # materials registered per call
        self._count = 1

    def window(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
        """Pixel slices covering the normalised box [y0, y1] x [x0, x1]; None when it is off-screen or empty."""
        r0, r1 = max(int(math.floor(y0 * self.h)), 0), min(int(math.ceil(y1 * self.h)), self.h)
        c0, c1 = max(int(math.floor(x0 * self.w)), 0), min(int(math.ceil(x1 * self.w)), self.w)
        return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None

    def material(self, rgb, tex=(0.0, 0.0, 0.0)):
        """Register colour(s) ``rgb`` (3,) or (n, 3) with texture amplitudes ``tex``; return the id (or ids (n,))."""
        rgb = np.asarray(rgb, np.float32)
        rows = rgb.reshape(-1, 3)
        first = self._count
        self._rgb.append(rows)
        self._tex.append(tex)
        self._rows.append(len(rows))
        self._count += len(rows)
        return first if rgb.ndim == 1 else np.arange(first, self._count)

    def paint(self, win, mask, cls: int | None, rgb=None, tex=(0.0, 0.0, 0.0), shade=None, mat=None) -> None:
        """Paint where ``mask`` (broadcastable to the window ``win``) holds.

        ``rgb`` + ``tex`` define a new material (colour and fine/medium/coarse texture amplitudes), or ``mat`` gives
        material ids (int or array broadcastable to the window). ``shade`` multiplies brightness; ``cls=None`` keeps
        the labels (markings on a surface).
        """
        if mat is None:
            mat = self.material(rgb, tex)
        mask = np.asarray(mask)
        np.copyto(self.mat[win], mat, where=mask)
        np.copyto(self.shade[win], 1.0 if shade is None else shade, where=mask, casting="same_kind")
        if cls is not None:
            np.copyto(self.lbl[win], np.uint8(cls), where=mask)

    def darken(self, win, mask, factor: float) -> None:
        """Multiply the brightness (not the label) by ``factor`` where ``mask`` holds: shadows."""
        shade = self.shade[win]
        np.multiply(shade, np.float32(factor), out=shade, where=np.broadcast_to(mask, shade.shape))

    def compose(self, gamma: float = 1.0) -> np.ndarray:
        """The image (3, H, W) float32: material colour ** gamma x (1 + texture) x shade; the sky where material is 0.

        Channel-first with per-channel ``np.take``: multi-column gathers and last-axis broadcasts are several times
        slower in NumPy.
        """
        rgb = np.concatenate(self._rgb).clip(0, None) ** np.float32(gamma)
        tex = np.repeat(np.asarray(self._tex, np.float32), self._rows, axis=0)
        m = self.mat
        mod = np.take(tex[:, 0], m) * self.noise["f"]
        mod += np.take(tex[:, 1], m) * self.noise["m"]
        mod += np.take(tex[:, 2], m) * self.noise["c"]
        mod += 1.0
        mod *= self.shade
        img = np.empty((3, self.h, self.w), np.float32)
        sky = m == 0
        for c in range(3):
            np.multiply(np.take(rgb[:, c], m), mod, out=img[c])
            np.copyto(img[c], self.bg[c] * self.shade, where=sky)
        return img

    def plane(self, plane_x: float, z1: float, z2: float, y_top: float, y_bottom: float = 0.0):
        """Pixels that may see the vertical plane X = plane_x between depths z1 < z2 and heights y_bottom..y_top.

        Returns None when off-screen, else ``(win, z, y)``: the window, the depth (1, w) at which each column meets
        the plane and the height (h, w) on the plane seen by each pixel. Callers still test z and y against the bounds.
        """
        cam = self.cam
        zs = (z1, z2)
        ys_top = [cam.y_h + cam.f * (1 - y_top) / z for z in zs]
        ys_bot = [cam.y_h + cam.f * (1 - y_bottom) / z for z in zs]
        xs = [cam.x_v + cam.fx * plane_x / z for z in zs]
        win = self.window(min(ys_top), max(ys_bot), min(xs), max(xs))
        if win is None:
            return None
        dx = self.xs[win[1]] - cam.x_v
        with np.errstate(divide="ignore"):
            # Columns on the other side of the vanishing point never meet the plane: depth -1 fails every test.
            z = np.where(dx * plane_x > 0, cam.fx * plane_x / dx, -1.0).astype(np.float32)[None, :]
        y = 1 - (self.ys[win[0], None] - cam.y_h) * z / cam.f
        return win, z, y

    def local(self, x_world: float, z: float, half_width: float, top: float, bottom: float = 0.0):
        """Window and object-frame coordinates around ground point (X, Z).

        Returns None when off-screen, else ``(win, u, v, min_u, min_v)``: u (1, w) lateral and v (h, 1) height above
        the ground, both in world units; min_u / min_v are half a pixel in those units (thin parts use them so that
        they never vanish between pixel centres).
        """
        cam = self.cam
        px, py = cam.x_v + cam.fx * x_world / z, cam.y_h + cam.f / z
        sx, sy = cam.fx / z, cam.f / z
        win = self.window(py - top * sy, py - bottom * sy, px - half_width * sx, px + half_width * sx)
        if win is None:
            return None
        u = ((self.xs[win[1]] - px) / sx)[None, :]
        v = ((py - self.ys[win[0]]) / sy)[:, None]
        return win, u, v, 0.5 / (self.w * sx), 0.5 / (self.h * sy)


def _seg_dist(u, v, a, b):
    """Distance of points (u, v) to the segment a-b (2-tuples), broadcast."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv + 1e-9), 0, 1)
    return np.hypot(u - a[0] - t * du, v - a[1] - t * dv)


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    """Multiplicative per-channel colour jitter (values may exceed 1; the final image is clipped)."""
    return np.asarray(rgb, np.float32) * (1 + rng.normal(0, amount, 3)).astype(np.float32)


# Colour families; their overlaps are deliberate (see module docstring).
_FACADES = [(0.78, 0.70, 0.56), (0.62, 0.36, 0.28), (0.60, 0.60, 0.60), (0.84, 0.84, 0.80), (0.42, 0.38, 0.36),
            (0.70, 0.62, 0.50), (0.55, 0.50, 0.45)]
_PAVEMENTS = [(0.55, 0.55, 0.55), (0.62, 0.58, 0.52), (0.58, 0.45, 0.42), (0.48, 0.48, 0.50)]
_CAR_COLOURS = [(0.85, 0.85, 0.85), (0.12, 0.12, 0.13), (0.55, 0.56, 0.58), (0.60, 0.08, 0.07), (0.10, 0.20, 0.50),
                (0.75, 0.70, 0.25), (0.20, 0.35, 0.25), (0.40, 0.40, 0.42)]
_CLOTHES = [(0.10, 0.10, 0.12), (0.20, 0.22, 0.35), (0.45, 0.40, 0.35), (0.60, 0.10, 0.10), (0.80, 0.80, 0.78),
            (0.25, 0.35, 0.20), (0.70, 0.55, 0.20), (0.35, 0.20, 0.35), (0.50, 0.50, 0.52)]
_SKINS = [(0.85, 0.68, 0.55), (0.62, 0.45, 0.33), (0.40, 0.28, 0.20), (0.90, 0.75, 0.62)]
_GREENS = [(0.22, 0.38, 0.14), (0.28, 0.42, 0.20), (0.18, 0.30, 0.12), (0.40, 0.45, 0.18), (0.45, 0.40, 0.30)]
_SIGN_COLOURS = [(0.80, 0.10, 0.10), (0.10, 0.25, 0.70), (0.90, 0.75, 0.10), (0.92, 0.92, 0.92), (0.10, 0.45, 0.25)]


def _choose(rng: np.random.Generator, options, p=None):
    """One of ``options`` (uniform, or with probabilities ``p``); ``Generator.choice`` is slow for single draws."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    return options[min(int(np.searchsorted(np.cumsum(p), rng.random() * sum(p))), len(options) - 1)]


def _pick(rng: np.random.Generator, options, amount: float = 0.06) -> np.ndarray:
    return _jitter(rng, options[rng.integers(len(options))], amount)


# ------------------------------------------------------------------------------------------------------------ layout

def _sample_layout(rng: np.random.Generator) -> dict:
    """Draw every random parameter of one scene (nothing here depends on the resolution)."""
    cam = _Camera(y_h=rng.uniform(0.42, 0.56), x_v=rng.uniform(0.38, 0.62), f=(f := rng.uniform(0.8, 1.0)),
                  fx=0.75 * f)
    rhw = rng.uniform(2.0, 3.5)
    rc = rng.uniform(-(rhw - 1.2), rhw - 1.2)  # road centre relative to the camera (which drives on the road)
    sw = rng.uniform(2.5, 5.0, 2)
    verge = np.where(rng.random(2) < 0.45, rng.uniform(0.8, 3.0, 2), 0.0)
    # Lateral X of road edge, sidewalk outer edge and wall, per side (0 = left, 1 = right).
    road_edge = np.array([rc - rhw, rc + rhw])
    side_sign = np.array([-1.0, 1.0])
    walk_edge = road_edge + side_sign * sw
    wall_x = walk_edge + side_sign * verge
    z_end = rng.uniform(40, 150)
    sunny = rng.random() < 0.6
    lay = dict(
        cam=cam, rhw=rhw, rc=rc, road_edge=road_edge, walk_edge=walk_edge, wall_x=wall_x, verge=verge, z_end=z_end,
        grids={k: rng.standard_normal(s).astype(np.float32)
               for k, s in (("c", (7, 9)), ("m", (25, 33)), ("a", (25, 33)), ("b", (13, 17)))},
        sky=dict(overcast=not sunny or rng.random() < 0.3,
                 top=_jitter(rng, (0.42, 0.58, 0.85), 0.08), low=_jitter(rng, (0.78, 0.84, 0.92), 0.04),
                 grey=_jitter(rng, (0.74, 0.76, 0.79), 0.05), clouds=rng.uniform(0.0, 0.08)),
        road=dict(rgb=_jitter(rng, np.multiply((0.36, 0.36, 0.38), rng.uniform(0.75, 1.3)), 0.04),
                  centre=rng.random() < 0.7, edges=rng.random() < 0.5, dash=rng.uniform(4, 9),
                  lane_off=_choose(rng, [0.0, -rhw / 2, rhw / 2])),
        walk=[_walk(rng) for _ in range(2)],
        grass=[_pick(rng, _GREENS[:3]) for _ in range(2)],
        light=dict(gain=rng.uniform(0.7, 1.2), gamma=rng.uniform(0.85, 1.2), tint=1 + rng.normal(0, 0.03, 3),
                   sunny=sunny, sun_side=int(rng.integers(2)), shadow_x=rc + rng.uniform(-rhw, rhw)),
        blocks=[_blocks(rng, z_end) for _ in range(2)],
        far=_far(rng, z_end),
        ann=dict(ignore_q=rng.uniform(0.5, 0.85), jitter_q=rng.uniform(0.5, 0.9), shift=int(rng.integers(4))),
    )
    lay["walk_tint_road"] = rng.random() < 0.3  # pavement coloured like the road: a real confusion
    if lay["walk_tint_road"]:
        for w in lay["walk"]:
            w["rgb"] = _jitter(rng, lay["road"]["rgb"] * 1.12, 0.03)
    lay["verge_objects"], lay["fences"], lay["objects"] = _objects(rng, lay)
    return lay


def _walk(rng: np.random.Generator) -> dict:
    return dict(rgb=_pick(rng, _PAVEMENTS), tile=rng.uniform(0.5, 1.2), kerb=rng.uniform(1.1, 1.5))


def _blocks(rng: np.random.Generator, z_end: float) -> dict:
    """Façade blocks along one side: start depth, boundaries and per-block kind/height/colour/windows."""
    z0 = rng.uniform(0.5, 10.0) if rng.random() < 0.5 else 0.5
    bounds = [z0]
    while bounds[-1] < z_end:
        bounds.append(bounds[-1] + rng.uniform(5, 22))
    n = len(bounds) - 1
    kind = rng.choice([BUILDING, TREE, SKY], size=n, p=[0.74, 0.21, 0.05])  # SKY = a gap in the row
    return dict(
        bounds=np.array(bounds, np.float32), kind=kind,
        height=np.where(kind == TREE, rng.uniform(3.0, 7.0, n), rng.uniform(3.5, 16.0, n)).astype(np.float32),
        rgb=np.stack([_pick(rng, _FACADES) if k != TREE else _pick(rng, _GREENS) for k in kind]),
        win_z=rng.uniform(1.4, 3.0, n).astype(np.float32), win_y=rng.uniform(1.5, 2.1, n).astype(np.float32),
        win_fz=rng.uniform(0.35, 0.7, n).astype(np.float32), win_fy=rng.uniform(0.4, 0.65, n).astype(np.float32),
        win_rgb=np.stack([_jitter(rng, (0.14, 0.16, 0.2) if rng.random() < 0.6 else (0.5, 0.58, 0.68), 0.1)
                          for _ in range(n)]),
        shop=rng.random(n) < 0.4, phase=rng.uniform(0, 6.28, n).astype(np.float32),
    )


def _far(rng: np.random.Generator, z_end: float) -> dict:
    kind = _choose(rng, [BUILDING, TREE, SKY], [0.55, 0.25, 0.2])
    return dict(kind=kind, height=rng.uniform(3, 10) if kind == BUILDING else rng.uniform(2, 4),
                rgb=_pick(rng, _FACADES) if kind == BUILDING else _pick(rng, _GREENS),
                skyline=rng.uniform(0.01, 0.05), skyline_kind=_choose(rng, [BUILDING, TREE]))


def _objects(rng: np.random.Generator, lay: dict) -> tuple[list, list, list]:
    """Objects as (kind, params) lists: verge vegetation, fences (both behind everything else), and the rest."""
    z_max = min(lay["z_end"], 80.0)
    re, we, wx, verge = lay["road_edge"], lay["walk_edge"], lay["wall_x"], lay["verge"]
    sgn = (-1.0, 1.0)
    verge_objs, fences, objs = [], [], []
    for s in range(2):
        if verge[s] > 0:  # bushes and trees on the grass verge
            for _ in range(rng.poisson(3)):
                x = we[s] + sgn[s] * rng.uniform(0.3, max(verge[s] - 0.3, 0.4))
                verge_objs.append(("tree", _tree(rng, x, rng.uniform(3, z_max), bush=rng.random() < 0.5)))
        if rng.random() < 0.65:
            z1 = rng.uniform(2.5, 30)
            fences.append(("fence", dict(x=wx[s] - sgn[s] * 0.15 if verge[s] == 0 else we[s] + sgn[s] * 0.1,
                                         z1=z1, z2=z1 + rng.uniform(8, 50), h=rng.uniform(0.8, 1.8),
                                         railing=rng.random() < 0.4, rgb=_pick(rng, _FACADES[:5] + [(0.3, 0.35, 0.3)]),
                                         post=rng.uniform(1.5, 3.0))))
        for _ in range(rng.poisson(2.0)):  # street trees in pits on the sidewalk
            objs.append(("tree", _tree(rng, we[s] - sgn[s] * rng.uniform(0.4, 0.8), rng.uniform(4, z_max), False)))
        for _ in range(rng.poisson(4.0)):
            objs.append(("pole", _pole(rng, re[s] + sgn[s] * rng.uniform(0.3, 0.7), rng.uniform(3, z_max), s)))
        for _ in range(rng.poisson(6.5)):  # pedestrians on the sidewalk
            objs.append(("person", _person(rng, rng.uniform(min(re[s], we[s]) + 0.3, max(re[s], we[s]) - 0.3),
                                           rng.uniform(3, 45))))
        for _ in range(rng.poisson(6.0)):  # parked cars along the kerb
            objs.append(("car", _car(rng, re[s] - sgn[s] * rng.uniform(0.9, 1.2), rng.uniform(3.5, z_max), False)))
    for _ in range(rng.poisson(3.0)):  # moving traffic
        oncoming = rng.random() < 0.5
        x = lay["rc"] + (rng.uniform(-0.9, -0.4) if oncoming else rng.uniform(0.4, 0.9)) * lay["rhw"]
        objs.append(("car", _car(rng, x, rng.uniform(6, z_max), oncoming)))
    for _ in range(rng.poisson(0.8)):  # pedestrians crossing
        objs.append(("person", _person(rng, lay["rc"] + rng.uniform(-lay["rhw"], lay["rhw"]), rng.uniform(4, 30))))
    for _ in range(rng.poisson(2.2)):
        s = int(rng.integers(2))
        objs.append(("cyclist", _cyclist(rng, re[s] - sgn[s] * rng.uniform(0.5, 1.2), rng.uniform(3, 40))))
    return verge_objs, fences, objs


def _tree(rng, x, z, bush):
    r = rng.uniform(0.6, 1.2) if bush else rng.uniform(1.4, 3.0)
    return dict(x=x, z=z, r=r, trunk_h=0.0 if bush else rng.uniform(1.5, 3.5), trunk_w=rng.uniform(0.08, 0.2),
                rgb=_pick(rng, _GREENS, 0.1), trunk_rgb=_jitter(rng, (0.30, 0.24, 0.18)),
                phase=rng.uniform(0, 6.28, 3), bare=not bush and rng.random() < 0.2)


def _pole(rng, x, z, side):
    sign = None
    if rng.random() < 0.8:
        back = rng.random() < 0.25  # a sign seen from behind: a grey plate, easily confused with its pole
        sign = dict(h=rng.uniform(2.0, 3.2), size=rng.uniform(0.5, 0.85), shape=int(rng.integers(5)),
                    rgb=_jitter(rng, (0.55, 0.55, 0.56)) if back else _pick(rng, _SIGN_COLOURS),
                    back=back, lit=int(rng.integers(3)), off=_choose(rng, [0.0, 0.0, 0.35]) * (1 - 2 * side))
    return dict(x=x, z=z, h=rng.uniform(3.0, 7.0) if sign is None or rng.random() < 0.6 else rng.uniform(2.6, 3.4),
                w=rng.uniform(0.09, 0.16), rgb=_jitter(rng, np.multiply((0.45, 0.45, 0.46), rng.uniform(0.5, 1.3))),
                lamp=rng.random() < 0.5, toward=1.0 if side == 0 else -1.0, sign=sign)


def _car(rng, x, z, oncoming):
    kind = _choose(rng, [0, 1, 2], [0.78, 0.17, 0.05])  # car, van, bus (CamVid's Car includes vans, trucks and buses)
    w = (rng.uniform(1.3, 1.6), rng.uniform(1.5, 1.8), rng.uniform(2.0, 2.2))[kind]
    return dict(x=x, z=z, w=w, length=(rng.uniform(3.0, 4.0), rng.uniform(4.0, 5.0), rng.uniform(8, 11))[kind],
                body=(rng.uniform(0.85, 1.05), rng.uniform(1.0, 1.2), rng.uniform(0.9, 1.1))[kind],
                top=(rng.uniform(1.3, 1.55), rng.uniform(1.8, 2.2), rng.uniform(2.6, 3.0))[kind],
                taper=(0.22, 0.06, 0.0)[kind], rgb=_pick(rng, _CAR_COLOURS), oncoming=oncoming)


def _person(rng, x, z):
    return dict(x=x, z=z, h=rng.uniform(1.05, 1.35), top=_pick(rng, _CLOTHES), legs=_pick(rng, _CLOTHES[:4]),
                skin=_pick(rng, _SKINS), hair=_jitter(rng, (0.12, 0.09, 0.07)), stride=rng.uniform(0.0, 0.12),
                back=rng.random() < 0.5)


def _cyclist(rng, x, z):
    return dict(x=x, z=z, side=rng.random() < 0.35, dir=1.0 if rng.random() < 0.5 else -1.0,
                top=_pick(rng, _CLOTHES), legs=_pick(rng, _CLOTHES[:4]), skin=_pick(rng, _SKINS),
                bike=_jitter(rng, np.multiply((0.2, 0.2, 0.22), rng.uniform(0.6, 2.5))))


# ------------------------------------------------------------------------------------------------------------ render

def _render_sky(cv: _Canvas, lay: dict) -> None:
    sky = lay["sky"]
    t = np.clip(cv.ys / max(lay["cam"].y_h, 1e-3), 0, 1)[None, :, None]  # 0 at the top, 1 at the horizon
    if sky["overcast"]:
        grad = np.broadcast_to(sky["grey"][:, None, None], (3, cv.h, 1))
    else:
        grad = sky["top"][:, None, None] * (1 - t) + sky["low"][:, None, None] * t
    cv.bg[:] = np.clip(grad, 0, None) ** np.float32(lay["light"]["gamma"])
    clouds = np.float32(sky["clouds"]) * np.maximum(cv.noise["c"] + 0.5 * cv.noise["m"], 0) + 0.02 * cv.noise["m"]
    cv.bg += clouds


def _ground_coords(cv: _Canvas) -> tuple[np.ndarray, np.ndarray, slice]:
    """Depth Z (h, 1) and lateral X (h, w) of the ground under each pixel row below the horizon, and those rows."""
    cam = cv.cam
    r0 = min(int(math.floor(cam.y_h * cv.h)) + 1, cv.h)
    rows = slice(r0, cv.h)
    z = (cam.f / np.maximum(cv.ys[rows] - cam.y_h, 1e-4))[:, None]
    x = (cv.xs[None, :] - cam.x_v) * z / cam.fx
    return z, x, rows


def _render_ground(cv: _Canvas, lay: dict) -> None:
    z, x, rows = _ground_coords(cv)
    win = (rows, slice(0, cv.w))
    if rows.start >= cv.h:
        return
    road = lay["road"]
    lat = x - lay["rc"]
    # Road, with lane marks (labelled Road, as CamVid's 11-class set merges road marking into road).
    cv.paint(win, True, ROAD, road["rgb"], tex=(0.06, 0.03, 0.05))
    fade = np.clip(1.2 - z / 60.0, 0, 1)  # marks fade into the distance rather than alias into noise
    centre = (np.abs(lat - road["lane_off"]) < 0.07) & ((z / road["dash"]) % 1.0 < 0.45) & road["centre"]
    edges = (np.abs(np.abs(lat) - (lay["rhw"] - 0.3)) < 0.06) & road["edges"]
    marks = (centre | edges) & (fade > 0)
    cv.paint(win, marks, None, (0.85, 0.85, 0.82), tex=(0.05, 0.03, 0.0), shade=0.6 + 0.4 * fade)
    for s, sgn in ((0, -1.0), (1, 1.0)):
        out = sgn * (x - lay["road_edge"][s])  # distance beyond the road edge on this side (camera heights)
        walk = lay["walk"][s]
        on_walk = out > 0
        tiles = (((x / walk["tile"]) % 1.0 < 0.06) | ((z / walk["tile"]) % 1.0 < 0.06)) & (z < 25)
        shade = np.where(tiles, 0.85, 1.0) * np.where(out < 0.15, walk["kerb"], 1.0)  # kerb stones are lighter
        cv.paint(win, on_walk, PAVEMENT, walk["rgb"], tex=(0.08, 0.04, 0.06), shade=shade)
        if lay["verge"][s] > 0:
            cv.paint(win, sgn * (x - lay["walk_edge"][s]) > 0, TREE, lay["grass"][s], tex=(0.25, 0.12, 0.08))
    light = lay["light"]
    if light["sunny"]:  # a building's shadow across road and sidewalk, on the side away from the sun
        beyond = (x - light["shadow_x"]) * (1.0 if light["sun_side"] == 0 else -1.0) > 0
        cv.darken(win, beyond, 0.55)


def _render_far(cv: _Canvas, lay: dict) -> None:
    cam, far, z = cv.cam, lay["far"], lay["z_end"]
    wx = lay["wall_x"]
    if far["kind"] == SKY:  # open street end: a low skyline of distant roofs or trees on the horizon
        top = cam.y_h - far["skyline"] * (1 + 0.6 * np.abs(np.sin(cv.xs * 23 + cv.noise["c"][0] * 2)))
        rows = slice(0, min(int(math.ceil(cam.y_h * cv.h)) + 1, cv.h))
        mask = (cv.ys[rows, None] > top[None, :]) & (cv.ys[rows, None] <= cam.y_h + 0.5 / cv.h)
        rgb = (0.55, 0.55, 0.58) if far["skyline_kind"] == BUILDING else (0.3, 0.36, 0.25)
        cv.paint((rows, slice(0, cv.w)), mask, int(far["skyline_kind"]), rgb, tex=(0.15, 0.1, 0.0), shade=0.9)
        return
    y0, y1 = cam.y_h - cam.f * (far["height"] - 1) / z, cam.y_h + cam.f / z
    win = cv.window(y0, y1, cam.x_v + cam.fx * wx[0] / z, cam.x_v + cam.fx * wx[1] / z)
    if win is None:
        return
    yy = cv.ys[win[0], None]
    height = 1 - (yy - cam.y_h) * z / cam.f
    if far["kind"] == TREE:
        wobble = 0.5 * np.sin(cv.xs[win[1]] * 40.0)[None, :]
        cv.paint(win, height < far["height"] + wobble, TREE, far["rgb"], tex=(0.3, 0.15, 0.1))
    else:
        windows = ((height % 1.8) > 0.8) & ((cv.xs[win[1]] * 60) % 1.0 < 0.5)[None, :] & (height > 1.5)
        cv.paint(win, True, BUILDING, far["rgb"], tex=(0.06, 0.05, 0.1), shade=np.where(windows, 0.5, 0.95))


def _render_walls(cv: _Canvas, lay: dict) -> None:
    light = lay["light"]
    for s in range(2):
        b = lay["blocks"][s]
        z_stop = min(float(b["bounds"][-1]), lay["z_end"])
        found = cv.plane(float(lay["wall_x"][s]), float(b["bounds"][0]), z_stop, float(b["height"].max()) + 0.6)
        if found is None:
            continue
        win, z, y_world = found  # y_world: height on the wall seen by each pixel
        idx = np.clip(np.searchsorted(b["bounds"], z, side="right") - 1, 0, len(b["kind"]) - 1)
        valid = (z >= b["bounds"][0]) & (z < z_stop)
        kind, height = b["kind"][idx], b["height"][idx]
        # Tree rows get a ragged top.
        height = np.where(kind == TREE, height + 0.6 * np.sin(z * 1.7 + b["phase"][idx]), height)
        mask = valid & (y_world >= 0) & (y_world <= height) & (kind != SKY)
        if not mask.any():
            continue
        side_light = 1.0 if not light["sunny"] else (1.0 if s == light["sun_side"] else 0.6)
        wz, wy = (z / b["win_z"][idx]) % 1.0, (y_world / b["win_y"][idx]) % 1.0
        upper = (wz < b["win_fz"][idx]) & (wy > 1 - b["win_fy"][idx]) & (y_world > 1.5) & (y_world < height - 0.6)
        shop = b["shop"][idx] & (y_world > 0.15) & (y_world < 1.25) & ((z / 4.0) % 1.0 < 0.7)
        glass = (upper | shop) & (kind == BUILDING)
        cornice = (y_world > height - 0.3) & (kind == BUILDING)
        shade = side_light * np.where(cornice, 0.8, 1.0) * (0.9 + 0.1 * np.cos(idx * 2.1))
        facade = cv.material(b["rgb"], (0.08, 0.03, 0.06))
        cv.paint(win, mask & (kind == BUILDING), BUILDING, mat=facade[idx], shade=shade)
        cv.paint(win, mask & glass, BUILDING, mat=cv.material(b["win_rgb"], (0.08, 0.03, 0.06))[idx], shade=side_light)
        cv.paint(win, mask & (kind == TREE), TREE, mat=cv.material(b["rgb"], (0.35, 0.15, 0.1))[idx], shade=side_light)


def _draw_tree(cv: _Canvas, p: dict) -> None:
    r = p["r"]
    top = p["trunk_h"] + 2.3 * r
    loc = cv.local(p["x"], p["z"], 1.35 * r, top)
    if loc is None:
        return
    win, u, v, mu, _ = loc
    cy = p["trunk_h"] + 1.05 * r
    trunk = (np.abs(u) < max(p["trunk_w"], mu)) & (v < cy)
    cv.paint(win, trunk, TREE, p["trunk_rgb"], tex=(0.15, 0.0, 0.0))
    du, dv = u / r, (v - cy) / (1.1 * r)
    theta = np.arctan2(dv, du)
    ph = p["phase"]
    edge = 1 + 0.16 * (np.sin(3 * theta + ph[0]) + 0.6 * np.sin(7 * theta + ph[1]) + 0.4 * np.sin(13 * theta + ph[2]))
    crown = np.hypot(du, dv) < edge
    if p["bare"]:  # leafless winter tree (CamVid is filmed in winter): a sparse, brownish crown
        crown &= cv.noise["m"][win] + 0.5 * np.sin(u * 9.0) > 0.2
        rgb = (0.42, 0.36, 0.30)
    else:
        rgb = p["rgb"]
    cv.paint(win, crown, TREE, rgb, tex=(0.35, 0.2, 0.0), shade=0.8 + 0.25 * np.clip(dv, -1, 1))


def _draw_pole(cv: _Canvas, p: dict) -> None:
    sign, h = p["sign"], p["h"]
    reach = 1.4 if p["lamp"] else 0.2
    loc = cv.local(p["x"], p["z"], max(reach, 0.8), h + 0.4)
    if loc is None:
        return
    win, u, v, mu, mv = loc
    pole = (np.abs(u) < max(p["w"], mu)) & (v <= h)
    if p["lamp"]:  # street lamp: an arm over the road and a lamp head
        end = (p["toward"] * 1.2, h + 0.15)
        pole |= _seg_dist(u, v, (0.0, h - 0.05), end) < max(0.05, mu, mv)
        pole |= (np.abs(u - end[0]) < 0.25) & (np.abs(v - end[1]) < max(0.07, mv))
    cv.paint(win, pole, POLE, p["rgb"], tex=(0.05, 0.0, 0.0), shade=np.where(u > 0, 0.85, 1.0))
    if sign is None:
        return
    uc, vc, r = sign["off"], sign["h"], sign["size"]
    du, dv = u - uc, v - vc
    shape = sign["shape"]
    if shape == 0:  # round
        plate = np.hypot(du, dv) < r
    elif shape == 1:  # rectangular board
        plate = (np.abs(du) < 1.3 * r) & (np.abs(dv) < 0.8 * r)
    elif shape == 2:  # triangle
        plate = (dv > -0.8 * r) & (dv < 0.9 * r - 1.9 * np.abs(du))
    elif shape == 3:  # diamond
        plate = np.abs(du) + np.abs(dv) < 1.1 * r
    else:  # traffic light: dark box, one lit lamp
        plate = (np.abs(du) < 0.55 * r) & (np.abs(dv) < 1.3 * r)
    if shape == 4:
        cv.paint(win, plate, SIGN, (0.1, 0.1, 0.1), tex=(0.05, 0.0, 0.0))
        lamp = np.hypot(du, dv - (sign["lit"] - 1) * 0.8 * r) < 0.35 * r
        lit = ((0.95, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.95, 0.4))[sign["lit"]]
        cv.paint(win, plate & lamp, SIGN, lit)
        return
    rim = np.ones(plate.shape, np.float32) if sign["back"] else np.where(
        np.hypot(du, dv) < 0.7 * r, 1.0, 0.8).astype(np.float32)
    cv.paint(win, plate, SIGN, sign["rgb"], tex=(0.04, 0.0, 0.0), shade=rim)
    if not sign["back"] and shape in (0, 1):  # a white symbol or text on the plate
        cv.paint(win, plate & (np.abs(dv) < 0.15 * r) & (np.abs(du) < 0.6 * r), SIGN, (0.95, 0.95, 0.95))


def _draw_fence(cv: _Canvas, p: dict) -> None:
    found = cv.plane(float(p["x"]), p["z1"], p["z2"], p["h"])
    if found is None:
        return
    win, z, y_world = found
    region = (z >= p["z1"]) & (z <= p["z2"]) & (y_world >= 0) & (y_world <= p["h"])
    posts = (z / p["post"]) % 1.0 < 0.06
    if p["railing"]:
        # Metal railing: rails and posts are drawn, the background shows through the rest, yet the whole railing is
        # labelled Fence, as CamVid's annotators did: the label is right while the pixels look like what is behind.
        bars = posts | (y_world > p["h"] - 0.08) | (np.abs(y_world - 0.4 * p["h"]) < 0.04) | ((z / 0.35) % 1.0 < 0.2)
        cv.darken(win, region, 0.85)
        cv.paint(win, region & bars, FENCE, (0.22, 0.24, 0.22), tex=(0.05, 0.0, 0.0))
        np.copyto(cv.lbl[win], np.uint8(FENCE), where=region)
    else:  # panel fence (wood, brick, concrete): colours from the façade family
        slats = (z / 0.3) % 1.0 < 0.5
        shade = np.where(posts, 0.7, 1.0) * np.where(slats, 0.93, 1.0) * np.where(y_world > p["h"] - 0.1, 0.85, 1.0)
        cv.paint(win, region, FENCE, p["rgb"], tex=(0.1, 0.05, 0.05), shade=shade)


def _draw_car(cv: _Canvas, p: dict) -> None:
    x, z, w, length, body, top, col = p["x"], p["z"], p["w"], p["length"], p["body"], p["top"], p["rgb"]
    half = w / 2
    if abs(x) > half:  # the side facing the camera's line of travel is visible
        found = cv.plane(x - math.copysign(half, x), z, z + length, top)
        if found is not None:
            win, zz, y_world = found
            t = (zz - z) / length  # 0 at the back (or front) face, 1 at the far end
            on = (t >= 0) & (t <= 1)
            tc = 1 - t if p["oncoming"] else t
            wheel = on & ((np.hypot((tc - 0.18) * length, y_world - 0.32) < 0.32)
                          | (np.hypot((tc - 0.82) * length, y_world - 0.32) < 0.32))
            side_body = on & (y_world >= 0.22) & (y_world <= body)
            k = (y_world - body) / (top - body)
            cabin = (on & (y_world > body) & (y_world <= top)
                     & (tc > 0.12 + p["taper"] * k) & (tc < 0.8 - 0.5 * p["taper"] * k))
            glass = cabin & (y_world > body + 0.06) & (y_world < top - 0.06)
            cv.paint(win, side_body | cabin, CAR, col, tex=(0.04, 0.02, 0.0), shade=0.72)
            cv.paint(win, glass, CAR, (0.12, 0.14, 0.17), tex=(0.1, 0.05, 0.0))
            cv.paint(win, wheel, CAR, (0.06, 0.06, 0.06))
    loc = cv.local(x, z, half + 0.15, top, bottom=-0.1)
    if loc is None:
        return
    win, u, v, mu, mv = loc
    au = np.abs(u)
    under = (au < half + 0.1) & (v < 0.22)  # the road under the car is in shadow
    cv.darken(win, under, 0.35)
    k = (v - body) / (top - body)
    cabin_half = half * (0.92 - p["taper"] * k)
    cab = (v > body) & (v <= top) & (au <= cabin_half)
    bod = (v >= 0.22) & (v <= body) & (au <= half)
    wheels = (v < 0.3) & (au >= half - 0.3) & (au <= half - 0.03)
    cv.paint(win, bod | cab, CAR, col, tex=(0.04, 0.02, 0.0), shade=np.where(v < 0.34, 0.7, 1.0))
    cv.paint(win, cab & (v > body + 0.06) & (v < top - 0.06) & (au < cabin_half - 0.08), CAR, (0.1, 0.12, 0.15),
             tex=(0.1, 0.05, 0.0), shade=0.8 + 0.5 * np.clip(k, 0, 1))
    cv.paint(win, wheels, CAR, (0.05, 0.05, 0.05))
    lamp = (au >= half - 0.27) & (au <= half - 0.05) & (np.abs(v - (body - 0.17)) < 0.07)
    cv.paint(win, lamp, CAR, (0.9, 0.88, 0.7) if p["oncoming"] else (0.75, 0.08, 0.06))
    cv.paint(win, (au < 0.22) & (np.abs(v - 0.42) < 0.06), CAR, (0.9, 0.9, 0.85) if p["oncoming"] else (0.9, 0.8, 0.2))


def _draw_person(cv: _Canvas, p: dict) -> None:
    h = p["h"]
    loc = cv.local(p["x"], p["z"], 0.22 * h, h * 1.01)
    if loc is None:
        return
    win, u, v, mu, _ = loc
    un, vn, au = u / h, v / h, np.abs(u / h)
    split = np.sign(un)  # which leg
    leg_c = split * (0.045 + p["stride"] * (0.48 - vn))
    legs = (vn < 0.48) & (np.abs(un - leg_c) < max(0.035, mu / h)) & (vn >= 0)
    torso = (vn >= 0.46) & (vn < 0.82) & (au < 0.1 + 0.06 * (vn - 0.46) / 0.36)
    arms = (vn >= 0.5) & (vn < 0.81) & (au >= 0.1) & (au < 0.165)
    head = np.hypot(un / 0.055, (vn - 0.915) / 0.07) < 1
    neck = (au < 0.03) & (vn >= 0.8) & (vn < 0.86)
    hair = head & ((vn > 0.94) | p["back"])
    cv.paint(win, legs, PEDESTRIAN, p["legs"], tex=(0.1, 0.0, 0.0))
    cv.paint(win, torso | arms, PEDESTRIAN, p["top"], tex=(0.1, 0.0, 0.0), shade=np.where(arms, 0.85, 1.0))
    cv.paint(win, head | neck, PEDESTRIAN, p["skin"], tex=(0.05, 0.0, 0.0))
    cv.paint(win, hair, PEDESTRIAN, p["hair"])


def _draw_cyclist(cv: _Canvas, p: dict) -> None:
    loc = cv.local(p["x"], p["z"], 1.0, 1.8)
    if loc is None:
        return
    win, u, v, mu, mv = loc
    thin = max(mu, mv)
    if p["side"]:  # crossing: seen from the side, wheels as rings, frame and rider as thick segments
        d = p["dir"]
        uu = u * d
        wheels = np.zeros(np.broadcast(u, v).shape, bool)
        for cu in (-0.52, 0.52):
            wheels |= np.abs(np.hypot(uu - cu, v - 0.34) - 0.32) < max(0.035, thin)
        frame = np.zeros_like(wheels)
        for a, b in (((-0.52, 0.34), (0.0, 0.34)), ((0.0, 0.34), (0.42, 0.9)), ((-0.52, 0.34), (-0.1, 0.95)),
                     ((-0.1, 0.95), (0.42, 0.9)), ((0.52, 0.34), (0.45, 1.05))):
            frame |= _seg_dist(uu, v, a, b) < max(0.03, thin)
        torso = _seg_dist(uu, v, (-0.1, 1.0), (0.2, 1.45)) < 0.12
        legs = ((_seg_dist(uu, v, (-0.1, 0.98), (0.15, 0.66)) < 0.07)
                | (_seg_dist(uu, v, (0.15, 0.66), (0.0, 0.32)) < 0.06))
        arms = _seg_dist(uu, v, (0.2, 1.4), (0.45, 1.05)) < max(0.045, thin)
        head = np.hypot(uu - 0.28, v - 1.62) < 0.11
    else:  # riding along the street: seen from behind
        au = np.abs(u)
        wheels = (au < max(0.03, mu)) & (v < 0.68)
        frame = (np.abs(v - 1.1) < max(0.025, mv)) & (au < 0.3)
        legs = (np.abs(au - 0.1) < 0.06) & (v >= 0.3) & (v < 1.0)
        torso = (v >= 0.95) & (v < 1.5) & (au < 0.17)
        arms = (au >= 0.17) & (au < 0.24) & (v >= 1.1) & (v < 1.45)
        head = np.hypot(u / 0.1, (v - 1.6) / 0.12) < 1
    cv.paint(win, wheels | frame, BICYCLIST, p["bike"], tex=(0.05, 0.0, 0.0))
    cv.paint(win, legs, BICYCLIST, p["legs"], tex=(0.1, 0.0, 0.0))
    cv.paint(win, torso | arms, BICYCLIST, p["top"], tex=(0.1, 0.0, 0.0))
    cv.paint(win, head, BICYCLIST, p["skin"])


_DRAW = {"tree": _draw_tree, "pole": _draw_pole, "fence": _draw_fence, "car": _draw_car, "person": _draw_person,
         "cyclist": _draw_cyclist}


def _finish_image(cv: _Canvas, lay: dict, rng: np.random.Generator) -> np.ndarray:
    """Exposure and optics: colours with global gamma, a slight blur, gain and tint, luminance grain.

    Returns float32 (3, H, W) in [0, 1]. Gamma is applied to the material colours rather than per pixel (a per-pixel
    power costs more than the rest of the frame).
    """
    light = lay["light"]
    img = cv.compose(light["gamma"])
    # Separable [1, 2, 1] / 4 blur (border rows and columns kept): edges are soft, as in a real camera.
    out = img.copy()
    out[:, 1:-1] += out[:, 1:-1]
    out[:, 1:-1] += img[:, :-2]
    out[:, 1:-1] += img[:, 2:]
    out[:, 1:-1] *= 0.25
    img = out.copy()
    out[:, :, 1:-1] += out[:, :, 1:-1]
    out[:, :, 1:-1] += img[:, :, :-2]
    out[:, :, 1:-1] += img[:, :, 2:]
    out[:, :, 1:-1] *= 0.25
    out *= (light["gain"] * light["tint"]).astype(np.float32)[:, None, None]
    out += rng.standard_normal((1, cv.h, cv.w), dtype=np.float32) * np.float32(0.015)
    return np.clip(out, 0, 1, out=out)


_NORMAL = NormalDist()


def _annotation_noise(lbl: np.ndarray, lay: dict, noise: dict[str, np.ndarray]) -> np.ndarray:
    """Return labels with annotation noise along class boundaries.

    Boundary pixels (a 4-neighbour has another class: a 2-pixel band) are set to ignore where a smooth random field is
    high, and elsewhere, where a second field is high, take the label of the pixel one step away in a per-scene
    direction (a shifted polygon edge). Both fields are coherent, so noise comes in stretches, not salt and pepper.
    """
    diff_h = lbl[:, 1:] != lbl[:, :-1]
    diff_v = lbl[1:, :] != lbl[:-1, :]
    edge = np.zeros(lbl.shape, bool)
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    ann = lay["ann"]
    ignore = edge & (noise["a"] > _NORMAL.inv_cdf(ann["ignore_q"]))
    dy, dx = ((0, 1), (0, -1), (1, 0), (-1, 0))[ann["shift"]]
    moved = np.roll(lbl, (dy, dx), axis=(0, 1))
    jitter = edge & ~ignore & (noise["b"] > _NORMAL.inv_cdf(ann["jitter_q"]))
    out = np.where(jitter, moved, lbl)
    out[ignore] = IGNORE_INDEX
    return out


def render_scene(index: int, split: str = "train", seed: int = 0, size: tuple[int, int] = (96, 128)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene as NumPy arrays (the work behind :class:`SyntheticScenes`).

    Parameters
    ----------
    index : non-negative int, the scene's position in its split's stream.
    split : "train", "val" (alias "cal") or "test".
    seed : non-negative int; different seeds give different streams.
    size : (H, W) in pixels, each at least 8.

    Returns
    -------
    image : float32 (3, H, W), RGB in [0, 1] (channel-first, as torch wants it).
    label : uint8 (H, W), train ids 0..10 or 255 (ignore).
    """
    split = canonical_split(split)
    for arg, val in (("index", index), ("seed", seed)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{arg} must be a non-negative int, got {val!r}")
    h, w = _check_size(size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(index)]))
    lay = _sample_layout(rng)
    # Coarse noise fields belong to the layout; the fine grain has about 2-pixel cells at any resolution.
    g = {**lay["grids"], "f": rng.standard_normal((max(h // 2, 97), max(w // 2, 129)), dtype=np.float32)}
    noise = {k: _field(g[k], h, w) for k in g}
    cv = _Canvas(h, w, lay["cam"], noise)
    _render_sky(cv, lay)
    _render_ground(cv, lay)
    _render_far(cv, lay)
    _render_walls(cv, lay)
    # Verge vegetation, then fences in front of it, then everything on sidewalks and road, each group far to near.
    for group in (lay["verge_objects"], lay["fences"], lay["objects"]):
        for kind, p in sorted(group, key=lambda o: -o[1].get("z", o[1].get("z2", 0.0))):
            _DRAW[kind](cv, p)
    image = _finish_image(cv, lay, rng)
    label = _annotation_noise(cv.lbl, lay, noise)
    return image, label


def _check_size(size) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 8 for s in size)):
        raise ValueError(f"size must be a pair of ints (H, W), each >= 8, got {size!r}")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------------------------------------- dataset

class SyntheticScenes(Dataset):
    """Procedural street scenes with CamVid's classes, generated on the fly (see the module docstring).

    Parameters
    ----------
    split : "train", "val" or "test"; "cal" is an alias of "val" (same scenes, same count): the calibration split is
        the validation split, as in the paper.
    n : number of scenes; default from the active profile (``n_train`` / ``n_val`` / ``n_test``).
    size : (H, W) of the rendered scenes; default ``(96, 128)``.
    seed : non-negative int selecting the stream; scene ``i`` depends only on (seed, split, i, size).
    shift : optional name of a domain shift from :data:`segcal_lib.data.shifts.SHIFTS`, applied to the image only;
        labels are those of the unshifted scene with the same index.
    severity : 1..5 when ``shift`` is given (0 = no shift).

    Attributes
    ----------
    num_classes : 11.
    class_names : tuple of the 11 class names.
    palette : uint8 array (11, 3) of label colours.
    ignore_index : 255.

    Items are :class:`~segcal_lib.data.base.Sample`: image float32 (3, H, W) in [0, 1], label int64 (H, W), name
    ``"synthetic/<split>/<index>"`` (with ``"+<shift><severity>"`` appended when shifted).
    """

    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES
    palette = PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", n: int | None = None, size: tuple[int, int] = (96, 128), seed: int = 0,
                 shift: str | None = None, severity: int = 0):
        self.split = canonical_split(split)
        if n is None:
            n = getattr(get_profile(), f"n_{self.split}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if shift is not None and shift not in SHIFTS:
            raise ValueError(f"unknown shift {shift!r}; known shifts: {sorted(SHIFTS)} (or None)")
        if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
            raise ValueError(f"severity must be an int in 0..5, got {severity!r}")
        if shift is None and severity:
            raise ValueError(f"severity={severity} needs a shift name; known shifts: {sorted(SHIFTS)}")
        self.n, self.size, self.seed = int(n), _check_size(size), int(seed)
        self.shift, self.severity = shift, severity

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} scenes")
        image, label = render_scene(int(i), self.split, self.seed, self.size)
        img = torch.from_numpy(image)
        name = f"synthetic/{self.split}/{int(i)}"
        if self.shift is not None and self.severity > 0:
            # A per-scene seed, so noise differs between scenes but is repeatable.
            img = apply_shift(img, self.shift, self.severity, seed=image_seed(self.seed, SPLIT_IDS[self.split], i))
            name += f"+{self.shift}{self.severity}"
        return Sample(img, torch.from_numpy(label.astype(np.int64)), name)

    def __repr__(self) -> str:
        shift = f", shift={self.shift!r}, severity={self.severity}" if self.shift else ""
        return f"SyntheticScenes(split={self.split!r}, n={self.n}, size={self.size}, seed={self.seed}{shift})"
