"""Occluders of the synthetic benchmark: the kinds (pedestrian, car, pole, signboard, bush, boxes, bin), their
random parameters, their drawing, and the fitting of an occluder to a target covered fraction of the body."""
import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from .synthetic_common import (
    CAR_COLOURS, COVERAGE_RANGE, Layer, OCCLUDER_KINDS, SIGN_COLOURS, _OCCLUDER_P, _jitter, _pick, _shade,
)
from .synthetic_appearance import draw_pedestrian, sample_appearance, sample_pose

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")


# ----------------------------------------------------------------------------- occluders
@dataclass
class Scene:
    """What occluders need to know about the target figure (canvas pixels)."""
    H: int
    W: int
    foot_x: float
    foot_y: float
    height: float
    body_x0: float
    body_x1: float


def _sample_occluder(kind, rng, scene):
    """Style parameters of one occluder, fixed while its size ``amount`` is fitted."""
    s = scene
    side = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "pedestrian":
        return dict(app=sample_appearance(rng), pose=sample_pose(rng), side=side,
                    scale=float(rng.uniform(1.0, 1.2)), drop=float(rng.uniform(0.0, 0.12)))
    if kind == "car":
        return dict(colour=_jitter(CAR_COLOURS[_pick(rng, list(CAR_COLOURS))], rng, 10),
                    x_front=float(rng.uniform(-0.4, 0.4)), side=side, wheel=float(rng.uniform(0.0, 0.5)))
    if kind == "pole":
        style = _pick(rng, ["metal", "tree", "pillar"])
        colour = {"metal": (120, 125, 128), "tree": (45, 65, 90), "pillar": (185, 190, 195)}[style]
        return dict(style=style, colour=_jitter(colour, rng, 15),
                    cx=float(rng.uniform(s.body_x0, s.body_x1)), side=side)
    if kind == "signboard":
        return dict(colour=_jitter(SIGN_COLOURS[_pick(rng, list(SIGN_COLOURS))], rng, 10),
                    cx=float(s.foot_x + side * rng.uniform(0.0, 0.12) * s.height),
                    cy=float(s.foot_y - rng.uniform(0.38, 0.55) * s.height),
                    aspect=float(rng.uniform(1.1, 1.8)), lines=int(rng.integers(2, 4)))
    if kind == "bush":
        blobs = [(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.3, 0.85)), float(rng.uniform(0.25, 0.45)),
                  float(rng.uniform(0.2, 0.35)), _jitter((50, 120, 60), rng, 25)) for _ in range(9)]
        return dict(blobs=blobs, ax=float(s.foot_x + side * rng.uniform(0.0, 0.12) * s.height))
    if kind == "boxes":
        boxes, y = [], 0.0
        for _ in range(int(rng.integers(2, 4))):
            bh = float(rng.uniform(0.28, 0.42))
            boxes.append((float(rng.uniform(-0.1, 0.1)), y, float(rng.uniform(0.7, 1.0)), bh,
                          _jitter((80, 135, 170), rng, 20)))
            y += bh
        return dict(boxes=boxes, total=y, side=side,
                    ax=float(s.foot_x + side * rng.uniform(0.02, 0.1) * s.height))
    if kind == "bin":
        return dict(colour=_jitter(((60, 110, 40), (100, 100, 100), (150, 90, 30), (40, 40, 40))[rng.integers(4)],
                                   rng, 10),
                    ax=float(s.foot_x + side * rng.uniform(0.0, 0.1) * s.height))
    raise ValueError(f"unknown occluder kind {kind!r}; expected one of {OCCLUDER_KINDS}")


def draw_occluder(layer, kind, params, amount, scene):
    """Draw occluder ``kind`` at size ``amount`` in [0, 1]; a larger amount covers a superset (or nearly so)."""
    s, p = scene, params
    h = s.height
    if kind == "pedestrian":     # another person in front, closer to the camera, sliding in from one side
        fx = s.foot_x + p["side"] * (1.0 - amount) * (0.55 * h)
        draw_pedestrian(layer, p["app"], p["pose"], fx, s.foot_y + p["drop"] * h, h * p["scale"])
    elif kind == "car":          # a parked / passing car from the bottom, spanning the width
        top = s.foot_y + 0.02 * h - amount * 1.1 * h
        ch = s.H - top
        x_front = s.W * (0.5 + p["x_front"])
        col = p["colour"]
        body_top = top + 0.34 * ch
        layer.polygon([(-s.W, body_top), (2 * s.W, body_top), (2 * s.W, s.H + 5), (-s.W, s.H + 5)], col)
        # cabin: roof plus windows, narrower than the body
        cab = [(x_front - p["side"] * 0.15 * s.W, body_top), (x_front + p["side"] * 0.05 * s.W, top),
               (x_front + p["side"] * 1.4 * s.W, top), (x_front + p["side"] * 1.6 * s.W, body_top)]
        layer.polygon(cab, col)
        if layer.image is not None:
            glass = _shade((120, 100, 90), 0.9)
            gtop = top + 0.07 * ch
            win = [(x_front - p["side"] * 0.08 * s.W, body_top - 0.02 * ch), (x_front + p["side"] * 0.1 * s.W, gtop),
                   (x_front + p["side"] * 1.4 * s.W, gtop), (x_front + p["side"] * 1.5 * s.W, body_top - 0.02 * ch)]
            layer.polygon(win, glass)
            layer.rect(x_front + p["side"] * 0.55 * s.W - 0.04 * s.W, gtop,
                       x_front + p["side"] * 0.55 * s.W + 0.04 * s.W, body_top, col)
            layer.rect(-s.W, body_top + 0.12 * ch, 2 * s.W, body_top + 0.15 * ch, _shade(col, 0.7))
            layer.rect(x_front + p["side"] * 0.6 * s.W, body_top + 0.2 * ch,
                       x_front + p["side"] * 0.6 * s.W + 0.1 * s.W, body_top + 0.24 * ch, _shade(col, 0.5))
            layer.ellipse((x_front - p["side"] * 0.12 * s.W, body_top + 0.08 * ch), (0.06 * s.W, 0.035 * ch),
                          (70, 200, 235) if p["side"] > 0 else (40, 40, 200))
            for wx in (x_front + p["side"] * (0.2 + p["wheel"]) * s.W, x_front + p["side"] * (1.2 + p["wheel"]) * s.W):
                layer.ellipse((wx, s.H + 0.05 * ch), (0.3 * ch, 0.3 * ch), (25, 25, 25))
                layer.ellipse((wx, s.H + 0.05 * ch), (0.14 * ch, 0.14 * ch), (150, 150, 150))
    elif kind == "pole":         # a vertical pole / tree trunk / pillar over the whole height
        w = 0.02 * s.W + amount * 0.75 * s.W
        x0, x1 = p["cx"] - w / 2, p["cx"] + w / 2
        col = p["colour"]
        if layer.image is None:
            layer.rect(x0, -1, x1, s.H + 1, col)
        else:
            n = 8
            for i in range(n):   # cylindrical shading across the width
                f = 0.7 + 0.45 * math.sin(math.pi * (i + 0.5) / n)
                layer.rect(x0 + w * i / n, -1, x0 + w * (i + 1) / n + 0.5, s.H + 1, _shade(col, f))
            if p["style"] == "tree":
                for i in range(4):
                    bx = x0 + w * (0.2 + 0.2 * i)
                    layer.rect(bx, -1, bx + max(0.6, 0.03 * w), s.H + 1, _shade(col, 0.55))
            elif p["style"] == "metal":
                for y in (0.25 * s.H, 0.7 * s.H):
                    layer.rect(x0, y, x1, y + 0.02 * s.H, _shade(col, 1.25))
    elif kind == "signboard":    # a board on posts, centred on the torso / hips
        bh = 0.05 * h + amount * 0.9 * h
        bw = bh * p["aspect"]
        x0, x1, y0, y1 = p["cx"] - bw / 2, p["cx"] + bw / 2, p["cy"] - bh / 2, p["cy"] + bh / 2
        post = (90, 90, 95)
        for px in (x0 + 0.15 * bw, x1 - 0.15 * bw):
            layer.rect(px - 0.015 * h, y1 - 1, px + 0.015 * h, s.foot_y + 0.02 * h, post)
        layer.rect(x0, y0, x1, y1, _shade(p["colour"], 0.75))
        layer.rect(x0 + 0.04 * bw, y0 + 0.04 * bw, x1 - 0.04 * bw, y1 - 0.04 * bw, p["colour"])
        if layer.image is not None:
            ink = (245, 245, 245) if sum(p["colour"]) < 450 else (40, 40, 40)
            for i in range(p["lines"]):
                ly = y0 + bh * (0.25 + 0.5 * i / max(1, p["lines"] - 1)) if p["lines"] > 1 else y0 + bh / 2
                layer.rect(x0 + 0.15 * bw, ly - 0.04 * bh, x1 - (0.15 + 0.15 * i) * bw, ly + 0.04 * bh, ink)
    elif kind == "bush":         # leafy blobs growing from the ground
        bh = 0.05 * h + amount * 1.0 * h
        for ox, oy, rx, ry, col in p["blobs"]:
            layer.ellipse((p["ax"] + ox * bh, s.foot_y + 0.05 * h - oy * bh), (rx * bh, ry * bh), col)
    elif kind == "boxes":        # stacked cardboard boxes at one side
        sc = (0.05 + amount * 1.0) * h / max(p["total"], 1e-6)
        base_y = s.foot_y + 0.04 * h
        for ox, y, bw, bh, col in p["boxes"]:
            cx = p["ax"] + ox * sc
            x0, x1 = cx - bw * sc / 2, cx + bw * sc / 2
            y1, y0 = base_y - y * sc, base_y - (y + bh) * sc
            layer.rect(x0, y0, x1, y1, col)
            layer.rect(x0, y0, x1, y0 + 0.12 * bh * sc, _shade(col, 0.8))
            layer.rect((x0 + x1) / 2 - 0.04 * bw * sc, y0, (x0 + x1) / 2 + 0.04 * bw * sc, y1, _shade(col, 1.15))
    elif kind == "bin":          # a litter bin / bollard: rounded cylinder from the ground
        bh = 0.05 * h + amount * 0.9 * h
        bw = 0.62 * bh
        x0, x1 = p["ax"] - bw / 2, p["ax"] + bw / 2
        top = s.foot_y + 0.03 * h - bh
        col = p["colour"]
        layer.rect(x0, top + 0.08 * bh, x1, s.foot_y + 0.03 * h, col)
        layer.ellipse((p["ax"], top + 0.08 * bh), (bw * 0.55, 0.08 * bh), _shade(col, 1.3))
        if layer.image is not None:
            for i in range(3):
                lx = x0 + bw * (0.25 + 0.25 * i)
                layer.rect(lx, top + 0.2 * bh, lx + 0.04 * bw, s.foot_y - 0.03 * h, _shade(col, 0.7))
    else:
        raise ValueError(f"unknown occluder kind {kind!r}; expected one of {OCCLUDER_KINDS}")


def covered_fraction(body_mask, occluder_mask):
    """Share of the body's pixels hidden by the occluder (masks thresholded at one half)."""
    body = body_mask > 127
    n = int(body.sum())
    return float(np.logical_and(body, occluder_mask > 127).sum()) / max(n, 1)


def _sliding_pedestrian_coverage(params, scene, body_mask):
    """The pedestrian occluder only slides sideways with ``amount``: draw it once on a padded mask and
    measure each position by slicing (integer-pixel shifts; the final coverage is measured exactly)."""
    reach = 0.55 * scene.height
    pad = int(math.ceil(reach)) + 2
    layer = Layer(shape=(scene.H, scene.W + 2 * pad))
    draw_occluder(layer, "pedestrian", params, 1.0, dataclasses.replace(scene, foot_x=scene.foot_x + pad))

    def coverage(a):
        shift = int(round(params["side"] * (1.0 - a) * reach))
        return covered_fraction(body_mask, layer.mask[:, pad - shift:pad - shift + scene.W])
    return coverage


def fit_occluder(kind, params, scene, body_mask, target, steps=9):
    """Bisection on the occluder's size so that it covers ``target`` of the body.

    Returns (amount, covered)."""
    def coverage(a):
        layer = Layer(shape=body_mask.shape)
        draw_occluder(layer, kind, params, a, scene)
        return covered_fraction(body_mask, layer.mask)

    if kind == "pedestrian":
        coverage = _sliding_pedestrian_coverage(params, scene, body_mask)

    lo, hi = 0.0, 1.0
    c_lo, c_hi = coverage(lo), coverage(hi)
    if c_hi < target or c_lo > target:
        return (hi, c_hi) if c_hi < target else (lo, c_lo)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        c = coverage(mid)
        if c < target:
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
    return (lo, c_lo) if abs(c_lo - target) <= abs(c_hi - target) else (hi, c_hi)


def choose_occluder(rng, scene, body_mask, kinds=OCCLUDER_KINDS, probs=_OCCLUDER_P, max_tries=8):
    """Pick an occluder kind and fit its size so that it covers 20-60 % of the body.

    Returns (kind, params, amount, covered)."""
    lo_cov, hi_cov = COVERAGE_RANGE
    kinds, probs = list(kinds), np.asarray(probs, np.float64) / np.sum(probs)
    for attempt in range(max_tries + 1):
        kind = "car" if attempt == max_tries else str(kinds[rng.choice(len(kinds), p=probs)])
        params = _sample_occluder(kind, rng, scene)
        target = float(rng.uniform(lo_cov + 0.02, hi_cov - 0.02))
        amount, _ = fit_occluder(kind, params, scene, body_mask, target)
        exact = Layer(shape=body_mask.shape)
        draw_occluder(exact, kind, params, amount, scene)
        covered = covered_fraction(body_mask, exact.mask)
        if lo_cov <= covered <= hi_cov:
            return kind, params, amount, covered
    raise RuntimeError("no occluder could be fitted to cover 20-60 % of the body")  # pragma: no cover
