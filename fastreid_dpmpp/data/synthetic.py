"""A synthetic occluded person-ReID benchmark, written in the layouts of the real datasets.

``make_synthetic_benchmark(root, seed)`` draws pedestrians procedurally (numpy + OpenCV) and writes

* ``Occluded_Duke/{bounding_box_train,query,bounding_box_test,query_holistic}``: like Occluded-Duke
  (SPEC §7), every query occluded, ~10 % of the gallery and ~35 % of the training images occluded;
  ``query_holistic`` holds the very same queries rendered without their occluder;
* ``Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}``: a mostly holistic Market-1501
  (names ``0001_c1s1_000151_01.jpg``, cameras 1..6, a few ``-1`` junk images in the gallery);
* ``OccludedREID/{occluded_body_images,whole_body_images}/<pid:03d>/<pid:03d>_<nn:02d>.tif``: the raw
  Occluded-REID layout, with identities disjoint from the Market training identities (the cross-dataset
  protocol "train on Market-1501, test on Occluded-REID");
* optionally ``DukeMTMC-reID/``: the holistic renders of the Occluded-Duke plan (the real Occluded-Duke
  is a re-split of DukeMTMC-reID), so that fast-reid's own ``DukeMTMC`` class has something to read.

Each layout root gets a ``meta.json`` with, per image, the occluder kind and the covered fraction of the
body (and per identity its clothing attributes).

Everything is a function of ``seed``: each identity, camera and image draws from its own
``numpy.random.SeedSequence([seed, stream, ...])``, so the same seed gives the same bytes whatever the
order of generation. Images are drawn at ``SUPERSAMPLE`` times the output size and reduced with area
averaging, which anti-aliases the drawing.
"""
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")

__all__ = [
    "LAYOUT_DIRS", "DEFAULT_LAYOUTS", "OCCLUDER_KINDS", "META_FILE",
    "make_synthetic_benchmark", "ensure_synthetic_benchmark", "make_preview", "load_meta",
    "Appearance", "sample_appearance", "render_pedestrian_sample", "BODY_PARTS", "make_camera",
    "PALETTE_FIELDS", "palette_key", "palette_probability",
]

LAYOUT_DIRS = {
    "occluded_duke": "Occluded_Duke",
    "market1501": "Market-1501-v15.09.15",
    "occluded_reid": "OccludedREID",
    "dukemtmc": "DukeMTMC-reID",
}
DEFAULT_LAYOUTS = ("occluded_duke", "market1501", "occluded_reid")
META_FILE = "meta.json"
GENERATOR_TAG = "fastreid_dpmpp.data.synthetic"
FORMAT_VERSION = 1
SUPERSAMPLE = 2
COVERAGE_RANGE = (0.2, 0.6)

# Independent random streams: SeedSequence([seed, stream, family, index]).
_STREAM_IDENTITY, _STREAM_CAMERA, _STREAM_IMAGE, _STREAM_PLAN = 1, 2, 3, 4
_FAMILY = {"duke": 1, "market": 2, "oreid": 3, "corpus": 4}   # corpus: the CLIP pretraining images

# ----------------------------------------------------------------------------- palettes (BGR)
# Finite palettes on purpose: different identities share colours, so hiding a body part can remove
# the only evidence that tells two identities apart.
UPPER_COLOURS = {
    "white": (232, 232, 230), "black": (38, 36, 36), "grey": (130, 128, 125), "red": (45, 40, 190),
    "blue": (175, 95, 40), "navy": (90, 45, 25), "green": (70, 135, 60), "yellow": (50, 195, 225),
    "pink": (175, 140, 235), "brown": (45, 75, 120), "orange": (35, 120, 235), "purple": (130, 60, 110),
}
LOWER_COLOURS = {
    "black": (35, 33, 33), "jeans": (125, 80, 45), "lightjeans": (185, 150, 115), "grey": (115, 112, 110),
    "khaki": (120, 165, 185), "white": (225, 225, 222), "brown": (40, 65, 100), "navy": (85, 45, 30),
}
SKIN_COLOURS = {
    "pale": (180, 200, 235), "light": (150, 180, 225), "tan": (110, 150, 200), "brown": (75, 110, 160),
    "dark": (50, 75, 110),
}
HAIR_COLOURS = {
    "black": (25, 25, 28), "darkbrown": (30, 45, 65), "brown": (45, 75, 110), "blonde": (110, 180, 220),
    "grey": (165, 165, 165),
}
SHOE_COLOURS = {"black": (30, 30, 30), "white": (225, 225, 225), "brown": (35, 60, 95), "grey": (120, 120, 120),
                "red": (40, 40, 180)}
ACCESSORY_COLOURS = {"black": (40, 40, 40), "brown": (40, 70, 115), "red": (50, 50, 170), "blue": (160, 90, 40),
                     "grey": (140, 140, 140), "beige": (150, 190, 210)}
CAR_COLOURS = {"silver": (190, 190, 185), "white": (235, 235, 235), "black": (35, 35, 35), "red": (40, 40, 175),
               "blue": (150, 80, 30), "darkgrey": (80, 80, 80)}
SIGN_COLOURS = {"blue": (160, 90, 20), "green": (70, 130, 20), "white": (235, 235, 235), "red": (40, 40, 200),
                "yellow": (40, 200, 235)}
PATTERNS = ("solid", "stripes", "checks", "two-tone")
_PATTERN_P = (0.5, 0.2, 0.15, 0.15)
OCCLUDER_KINDS = ("pedestrian", "car", "pole", "signboard", "bush", "boxes", "bin")
_OCCLUDER_P = (0.3, 0.18, 0.12, 0.1, 0.12, 0.09, 0.09)


def _rng(seed, *keys):
    return np.random.default_rng(np.random.SeedSequence([int(seed)] + [int(k) for k in keys]))


def _pick(rng, names, p=None):
    names = list(names)
    if p is None:
        return str(names[int(rng.integers(len(names)))])
    k = int(np.searchsorted(np.cumsum(p), rng.random() * float(np.sum(p)), side="right"))
    return str(names[min(k, len(names) - 1)])


def _jitter(colour, rng, amount=10):
    return tuple(min(255, max(0, int(c) + int(d))) for c, d in zip(colour, rng.integers(-amount, amount + 1, 3)))


def _shade(colour, factor):
    return tuple(min(255, max(0, int(c * factor))) for c in colour)


# ----------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class Appearance:
    """Identity-specific look: clothing colours and pattern, body proportions, accessories.

    Colour fields hold palette names (shared between identities); ``*_bgr`` hold the identity's
    slightly jittered shade of that colour."""
    skin: str
    hair: str
    hair_style: str          # short | long | bald | bun
    upper: str
    upper2: str              # second colour of the pattern
    pattern: str             # solid | stripes | checks | two-tone
    sleeves: str             # long | short
    lower: str
    lower_style: str         # trousers | shorts | skirt
    shoes: str
    hat: str                 # "" = none
    backpack: str
    bag: str
    bag_side: int            # +1 / -1: which hip the shoulder bag hangs on
    height: float            # fraction of the tallest person
    shoulder: float
    hip: float
    leg_ratio: float         # hip-to-ankle length / height
    head: float
    build: float             # limb thickness
    skin_bgr: tuple
    hair_bgr: tuple
    upper_bgr: tuple
    upper2_bgr: tuple
    lower_bgr: tuple
    shoes_bgr: tuple
    hat_bgr: tuple
    backpack_bgr: tuple
    bag_bgr: tuple

    def attributes(self):
        """The palette-level description (used in meta.json)."""
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in asdict(self).items() if not k.endswith("_bgr")}


# Categorical distributions of the palette-level fields: (choices, probabilities or None = uniform).
_HAIR_P = (0.4, 0.25, 0.15, 0.12, 0.08)
_HAIR_STYLES = (("short", "long", "bald", "bun"), (0.55, 0.3, 0.05, 0.1))
_SLEEVES = (("long", "short"), (0.6, 0.4))
_LOWER_STYLES = (("trousers", "shorts", "skirt"), (0.72, 0.14, 0.14))
_SHOE_P = (0.4, 0.25, 0.15, 0.12, 0.08)
_ACCESSORY_P = {"hat": 0.22, "backpack": 0.3, "bag": 0.25}   # probability of carrying / wearing one
PALETTE_FIELDS = ("skin", "hair", "hair_style", "upper", "upper2", "pattern", "sleeves", "lower", "lower_style",
                  "shoes", "hat", "backpack", "bag", "bag_side")


def sample_appearance(rng):
    """Draw one identity's appearance from the finite palettes."""
    upper = _pick(rng, list(UPPER_COLOURS))
    upper2 = _pick(rng, [c for c in UPPER_COLOURS if c != upper])
    lower_style = _pick(rng, *_LOWER_STYLES)
    hat = _pick(rng, list(ACCESSORY_COLOURS)) if rng.random() < _ACCESSORY_P["hat"] else ""
    backpack = _pick(rng, list(ACCESSORY_COLOURS)) if rng.random() < _ACCESSORY_P["backpack"] else ""
    bag = _pick(rng, list(ACCESSORY_COLOURS)) if rng.random() < _ACCESSORY_P["bag"] else ""
    fields = dict(
        skin=_pick(rng, list(SKIN_COLOURS)),
        hair=_pick(rng, list(HAIR_COLOURS), p=_HAIR_P),
        hair_style=_pick(rng, *_HAIR_STYLES),
        upper=upper, upper2=upper2,
        pattern=_pick(rng, PATTERNS, p=_PATTERN_P),
        sleeves=_pick(rng, *_SLEEVES),
        lower=_pick(rng, list(LOWER_COLOURS)),
        lower_style=lower_style,
        shoes=_pick(rng, list(SHOE_COLOURS), p=_SHOE_P),
        hat=hat, backpack=backpack, bag=bag, bag_side=int(rng.choice([-1, 1])),
        height=float(rng.uniform(0.88, 1.0)),
        shoulder=float(rng.uniform(0.85, 1.15)),
        hip=float(rng.uniform(0.85, 1.15)),
        leg_ratio=float(rng.uniform(0.44, 0.52)),
        head=float(rng.uniform(0.9, 1.1)),
        build=float(rng.uniform(0.85, 1.2)),
    )
    bgr = dict(
        skin_bgr=_jitter(SKIN_COLOURS[fields["skin"]], rng, 8),
        hair_bgr=_jitter(HAIR_COLOURS[fields["hair"]], rng, 8),
        upper_bgr=_jitter(UPPER_COLOURS[upper], rng, 12),
        upper2_bgr=_jitter(UPPER_COLOURS[upper2], rng, 12),
        lower_bgr=_jitter(LOWER_COLOURS[fields["lower"]], rng, 10),
        shoes_bgr=_jitter(SHOE_COLOURS[fields["shoes"]], rng, 8),
        hat_bgr=_jitter(ACCESSORY_COLOURS.get(hat, (0, 0, 0)), rng, 8),
        backpack_bgr=_jitter(ACCESSORY_COLOURS.get(backpack, (0, 0, 0)), rng, 8),
        bag_bgr=_jitter(ACCESSORY_COLOURS.get(bag, (0, 0, 0)), rng, 8),
    )
    return Appearance(**fields, **bgr)


def _choice_probability(value, names, p=None):
    names = list(names)
    if value not in names:
        return 0.0
    if p is None:
        return 1.0 / len(names)
    return float(p[names.index(value)]) / float(np.sum(p))


def palette_key(app):
    """The palette-level identity of an appearance: its categorical fields (PALETTE_FIELDS), no jitter."""
    return tuple(getattr(app, f) for f in PALETTE_FIELDS)


def palette_probability(key):
    """Probability that ``sample_appearance`` draws the palette-level tuple ``key`` (see ``palette_key``)."""
    f = dict(zip(PALETTE_FIELDS, key))
    prob = (_choice_probability(f["skin"], SKIN_COLOURS) * _choice_probability(f["hair"], HAIR_COLOURS, _HAIR_P)
            * _choice_probability(f["hair_style"], *_HAIR_STYLES) * _choice_probability(f["upper"], UPPER_COLOURS)
            * _choice_probability(f["upper2"], [c for c in UPPER_COLOURS if c != f["upper"]])
            * _choice_probability(f["pattern"], PATTERNS, _PATTERN_P) * _choice_probability(f["sleeves"], *_SLEEVES)
            * _choice_probability(f["lower"], LOWER_COLOURS) * _choice_probability(f["lower_style"], *_LOWER_STYLES)
            * _choice_probability(f["shoes"], SHOE_COLOURS, _SHOE_P) * _choice_probability(f["bag_side"], (-1, 1)))
    for field, p_has in _ACCESSORY_P.items():
        prob *= (1.0 - p_has) if f[field] == "" else p_has * _choice_probability(f[field], ACCESSORY_COLOURS)
    return prob


@dataclass(frozen=True)
class Pose:
    view: str        # front | back | left | right
    stride: float    # -1..1, walking phase
    arm_swing: float
    lean: float


def sample_pose(rng):
    return Pose(view=_pick(rng, ["front", "back", "left", "right"], p=[0.32, 0.32, 0.18, 0.18]),
                stride=float(rng.uniform(-1, 1)), arm_swing=float(rng.uniform(-1, 1)),
                lean=float(rng.uniform(-1, 1)))


# ----------------------------------------------------------------------------- drawing layer
_SHIFT = 4
_ONE = 1 << _SHIFT


def _fixed(points):
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fixed_pt(p):
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


class Layer:
    """Draws filled shapes into an image (optional) and into this layer's own coverage mask at once.

    Coordinates are float canvas pixels (sub-pixel precision through OpenCV's ``shift``)."""

    def __init__(self, image=None, shape=None):
        self.image = image
        self.mask = np.zeros(image.shape[:2] if image is not None else shape, np.uint8)

    def polygon(self, pts, colour):
        p = _fixed(pts)
        if self.image is not None:
            cv2.fillPoly(self.image, [p], colour, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.mask, [p], 255, cv2.LINE_AA, _SHIFT)

    def ellipse(self, centre, axes, colour, angle=0.0, start=0, end=360):
        c = _fixed_pt(centre)
        a = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
        if self.image is not None:
            cv2.ellipse(self.image, c, a, angle, start, end, colour, -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(self.mask, c, a, angle, start, end, 255, -1, cv2.LINE_AA, _SHIFT)

    def rect(self, x0, y0, x1, y1, colour):
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)

    def limb(self, p0, p1, w0, w1, colour, caps=True):
        """A tapered capsule from p0 (width w0) to p1 (width w1)."""
        (x0, y0), (x1, y1) = p0, p1
        d = math.hypot(x1 - x0, y1 - y0) or 1e-6
        nx, ny = -(y1 - y0) / d, (x1 - x0) / d
        self.polygon([(x0 + nx * w0 / 2, y0 + ny * w0 / 2), (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
                      (x1 - nx * w1 / 2, y1 - ny * w1 / 2), (x0 - nx * w0 / 2, y0 - ny * w0 / 2)], colour)
        if caps:
            self.ellipse(p0, (w0 / 2, w0 / 2), colour)
            self.ellipse(p1, (w1 / 2, w1 / 2), colour)

    def textured_polygon(self, pts, texture):
        """Fill a polygon with ``texture(ys, xs) -> (h, w, 3) uint8`` sampled on the polygon's box."""
        p = _fixed(pts)
        cv2.fillPoly(self.mask, [p], 255, cv2.LINE_AA, _SHIFT)
        if self.image is None:
            return
        H, W = self.mask.shape
        xs_, ys_ = np.asarray(pts, np.float64)[:, 0], np.asarray(pts, np.float64)[:, 1]
        x0, x1 = max(0, int(xs_.min()) - 1), min(W, int(math.ceil(xs_.max())) + 2)
        y0, y1 = max(0, int(ys_.min()) - 1), min(H, int(math.ceil(ys_.max())) + 2)
        if x1 <= x0 or y1 <= y0:
            return
        alpha = np.zeros((H, W), np.uint8)
        cv2.fillPoly(alpha, [p], 255, cv2.LINE_AA, _SHIFT)
        a = alpha[y0:y1, x0:x1, None].astype(np.float32) / 255.0
        ys, xs = np.mgrid[y0:y1, x0:x1]
        tex = texture(ys, xs).astype(np.float32)
        region = self.image[y0:y1, x0:x1].astype(np.float32)
        self.image[y0:y1, x0:x1] = (region * (1 - a) + tex * a + 0.5).astype(np.uint8)


def _clothing_texture(app, period, origin_y, split_y):
    """Pattern of the upper garment (SPEC: identity cue) as a function of canvas coordinates."""
    c1 = np.asarray(app.upper_bgr, np.float32)
    c2 = np.asarray(app.upper2_bgr, np.float32)

    def texture(ys, xs):
        if app.pattern == "stripes":
            sel = ((ys - origin_y) // period).astype(np.int64) % 2 == 1
        elif app.pattern == "checks":
            sel = (((ys - origin_y) // period).astype(np.int64) + (xs // period).astype(np.int64)) % 2 == 1
        elif app.pattern == "two-tone":
            sel = ys >= split_y
        else:
            sel = np.zeros(ys.shape, bool)
        return np.where(sel[..., None], c2, c1)
    return texture


# ----------------------------------------------------------------------------- pedestrians
def draw_pedestrian(layer, app, pose, foot_x, foot_y, height):
    """Draw one pedestrian standing on (foot_x, foot_y), ``height`` canvas pixels tall.

    Front, back and side views; walking phase moves legs and arms; accessories follow the view."""
    h = height * app.height
    view = pose.view
    side = view in ("left", "right")
    d = 1.0 if view == "right" else -1.0          # facing direction for side views
    wf = 0.62 if side else 1.0
    top = foot_y - h
    lean_dx = pose.lean * 0.025 * h
    ankle_y = foot_y - 0.03 * h
    hip_y = ankle_y - app.leg_ratio * h
    shoulder_y = top + 0.175 * h
    head_ry = 0.063 * h * app.head
    head_rx = head_ry * (0.82 if side else 0.78)
    head_c = (foot_x + lean_dx * 1.2 + (0.012 * h * d if side else 0.0), top + head_ry)
    sw = 0.105 * h * app.shoulder * wf
    hw = 0.08 * h * app.hip * wf
    cx_s = foot_x + lean_dx                       # shoulder-line centre
    limb_w = 0.068 * h * app.build
    arm_w = 0.047 * h * app.build

    skin, hair = app.skin_bgr, app.hair_bgr
    upper, lower, shoes = app.upper_bgr, app.lower_bgr, app.shoes_bgr
    legwear = skin if app.lower_style != "trousers" else lower

    # legs ---------------------------------------------------------------------------------------
    legs = []
    if side:
        for k, sgn in enumerate((-1.0, 1.0)):      # far leg first
            s = pose.stride * sgn
            hip = (foot_x + d * 0.01 * h * sgn, hip_y)
            ankle = (foot_x + d * 0.15 * h * s, ankle_y - 0.02 * h * max(0.0, -s))
            knee = ((hip[0] + ankle[0]) / 2 + d * 0.03 * h * (1 - abs(s)) + d * 0.02 * h * max(0.0, -s),
                    (hip[1] + ankle[1]) / 2)
            legs.append((hip, knee, ankle, 0.82 if k == 0 else 1.0))
    else:
        for sgn in (-1.0, 1.0):
            hip = (foot_x + sgn * 0.042 * h * app.hip, hip_y)
            lift = 0.018 * h * pose.stride * sgn
            ankle = (foot_x + sgn * (0.05 * h + 0.012 * h * abs(pose.stride)), ankle_y - max(0.0, lift))
            knee = ((hip[0] + ankle[0]) / 2, (hip[1] + ankle[1]) / 2)
            legs.append((hip, knee, ankle, 1.0))

    # long hair falls behind the shoulders (front view) -------------------------------------------
    if app.hair_style == "long" and view == "front":
        layer.rect(head_c[0] - head_rx * 1.05, head_c[1], head_c[0] + head_rx * 1.05, shoulder_y + 0.07 * h,
                   _shade(hair, 0.9))

    # side view: far arm behind the body
    arm_len_u, arm_len_f = 0.17 * h, 0.155 * h
    shoulder_l = (cx_s - sw + arm_w * 0.5, shoulder_y + 0.02 * h)
    shoulder_r = (cx_s + sw - arm_w * 0.5, shoulder_y + 0.02 * h)

    def draw_arm(shoulder, phi, shade, outward):
        elbow = (shoulder[0] + arm_len_u * math.sin(phi) + outward, shoulder[1] + arm_len_u * math.cos(phi))
        phi2 = phi + 0.25 * (d if side else 0.0) + (0.0 if side else outward / h)
        hand = (elbow[0] + arm_len_f * math.sin(phi2), elbow[1] + arm_len_f * math.cos(phi2))
        sleeve = _shade(upper, shade)
        layer.limb(shoulder, elbow, arm_w, arm_w * 0.88, sleeve)
        layer.limb(elbow, hand, arm_w * 0.88, arm_w * 0.75, sleeve if app.sleeves == "long" else _shade(skin, shade))
        layer.ellipse(hand, (arm_w * 0.45, arm_w * 0.5), _shade(skin, shade))

    if side:
        draw_arm((cx_s, shoulder_y + 0.02 * h), -d * 0.45 * pose.arm_swing, 0.75, 0.0)

    for hip, knee, ankle, shade in legs:
        top_col = _shade(lower, shade)
        layer.limb(hip, knee, limb_w, limb_w * 0.85,
                   top_col if app.lower_style != "skirt" else _shade(legwear, shade))
        shin_col = _shade(lower if app.lower_style == "trousers" else legwear, shade)
        layer.limb(knee, ankle, limb_w * 0.85, limb_w * 0.7, shin_col)
        shoe_c = (ankle[0] + (d * 0.018 * h if side else 0.0), ankle[1] + 0.012 * h)
        layer.ellipse(shoe_c, (0.045 * h if side else 0.034 * h, 0.021 * h), _shade(shoes, shade))

    if app.lower_style == "shorts":               # shorts: the thigh is covered by the garment
        for hip, knee, _, shade in legs:
            mid = (hip[0] * 0.45 + knee[0] * 0.55, hip[1] * 0.45 + knee[1] * 0.55)
            layer.limb(hip, mid, limb_w * 1.08, limb_w * 1.02, _shade(lower, shade), caps=False)
    if app.lower_style == "skirt":
        knee_y = hip_y + 0.52 * (ankle_y - hip_y)
        flare = hw * 1.45
        layer.polygon([(foot_x - hw * 0.95, hip_y - 0.01 * h), (foot_x + hw * 0.95, hip_y - 0.01 * h),
                       (foot_x + flare, knee_y), (foot_x - flare, knee_y)], lower)
    else:                                          # pelvis block joins the legs
        layer.polygon([(foot_x - hw, hip_y - 0.015 * h), (foot_x + hw, hip_y - 0.015 * h),
                       (foot_x + hw * 0.9, hip_y + 0.06 * h), (foot_x - hw * 0.9, hip_y + 0.06 * h)], lower)

    # torso with the clothing pattern --------------------------------------------------------------
    waist_y = hip_y + 0.01 * h
    torso = [(cx_s - sw * 0.82, shoulder_y - 0.004 * h), (cx_s + sw * 0.82, shoulder_y - 0.004 * h),
             (cx_s + sw, shoulder_y + 0.035 * h), (foot_x + hw * 1.02, waist_y),
             (foot_x - hw * 1.02, waist_y), (cx_s - sw, shoulder_y + 0.035 * h)]
    period = max(2.0, 0.036 * h)
    layer.textured_polygon(torso, _clothing_texture(app, period, shoulder_y, (shoulder_y + waist_y) / 2))

    # backpack seen from the back / the side, straps from the front -------------------------------
    if app.backpack:
        bp = app.backpack_bgr
        if view == "back":
            layer.polygon([(cx_s - sw * 0.7, shoulder_y + 0.04 * h), (cx_s + sw * 0.7, shoulder_y + 0.04 * h),
                           (cx_s + sw * 0.75, shoulder_y + 0.24 * h), (cx_s - sw * 0.75, shoulder_y + 0.24 * h)], bp)
            layer.rect(cx_s - sw * 0.5, shoulder_y + 0.15 * h, cx_s + sw * 0.5, shoulder_y + 0.2 * h, _shade(bp, 0.75))
        elif side:
            bx = cx_s - d * sw
            layer.polygon([(bx, shoulder_y + 0.03 * h), (bx - d * 0.07 * h, shoulder_y + 0.045 * h),
                           (bx - d * 0.075 * h, shoulder_y + 0.23 * h), (bx, shoulder_y + 0.24 * h)], bp)
        else:
            for sgn in (-1, 1):
                layer.limb((cx_s + sgn * sw * 0.55, shoulder_y + 0.005 * h),
                           (cx_s + sgn * sw * 0.62, shoulder_y + 0.17 * h), 0.018 * h, 0.018 * h,
                           _shade(bp, 0.8), caps=False)

    # arms ---------------------------------------------------------------------------------------
    if side:
        draw_arm((cx_s + d * 0.01 * h, shoulder_y + 0.02 * h), d * 0.45 * pose.arm_swing, 1.0, 0.0)
    else:
        swing = 0.08 * pose.arm_swing
        draw_arm(shoulder_l, 0.12 + swing, 0.95, -0.01 * h)
        draw_arm(shoulder_r, -0.12 + swing, 0.95, 0.01 * h)

    # shoulder bag: strap across the chest, bag at the hip -----------------------------------------
    if app.bag:
        bg = app.bag_bgr
        s = float(app.bag_side)
        if not side:
            layer.limb((cx_s + s * sw * 0.7, shoulder_y + 0.005 * h), (foot_x - s * hw * 0.9, hip_y - 0.02 * h),
                       0.014 * h, 0.014 * h, _shade(bg, 0.7), caps=False)
        bx = foot_x - s * (hw + 0.02 * h) if not side else foot_x + d * 0.01 * h
        layer.polygon([(bx - 0.055 * h, hip_y - 0.06 * h), (bx + 0.055 * h, hip_y - 0.06 * h),
                       (bx + 0.06 * h, hip_y + 0.05 * h), (bx - 0.06 * h, hip_y + 0.05 * h)], bg)

    # neck and head ------------------------------------------------------------------------------
    layer.limb((head_c[0], head_c[1] + head_ry * 0.6), (cx_s, shoulder_y + 0.01 * h), 0.04 * h, 0.045 * h,
               _shade(skin, 0.9))
    if view == "back" and app.hair_style != "bald":
        layer.ellipse(head_c, (head_rx, head_ry), hair)
        if app.hair_style == "long":
            layer.polygon([(head_c[0] - head_rx * 0.95, head_c[1]), (head_c[0] + head_rx * 0.95, head_c[1]),
                           (head_c[0] + head_rx * 1.1, shoulder_y + 0.09 * h),
                           (head_c[0] - head_rx * 1.1, shoulder_y + 0.09 * h)], hair)
    else:
        layer.ellipse(head_c, (head_rx, head_ry), skin)
        if app.hair_style != "bald":
            if side:      # hair covers the back half of the head
                layer.ellipse((head_c[0] - d * head_rx * 0.18, head_c[1] - head_ry * 0.12),
                              (head_rx * 0.95, head_ry * 0.95), hair, angle=0, start=0, end=360)
                layer.ellipse((head_c[0] + d * head_rx * 0.35, head_c[1] + head_ry * 0.2),
                              (head_rx * 0.62, head_ry * 0.72), skin)
                if app.hair_style == "long":
                    layer.rect(head_c[0] - d * head_rx * 1.0, head_c[1], head_c[0] - d * head_rx * 0.1,
                               shoulder_y + 0.06 * h, hair)
            else:         # a cap of hair over the forehead
                layer.ellipse((head_c[0], head_c[1] - head_ry * 0.25), (head_rx * 1.04, head_ry * 0.82), hair,
                              start=180, end=360)
                layer.rect(head_c[0] - head_rx * 1.02, head_c[1] - head_ry * 0.28, head_c[0] - head_rx * 0.7,
                           head_c[1] + head_ry * 0.3, hair)
                layer.rect(head_c[0] + head_rx * 0.7, head_c[1] - head_ry * 0.28, head_c[0] + head_rx * 1.02,
                           head_c[1] + head_ry * 0.3, hair)
            # eyes: two dark dots make the face read as a face at this size
            if view == "front":
                for sgn in (-1, 1):
                    layer.ellipse((head_c[0] + sgn * head_rx * 0.38, head_c[1] + head_ry * 0.08),
                                  (head_rx * 0.1, head_ry * 0.07), _shade(skin, 0.45))
        if app.hair_style == "bun":
            layer.ellipse((head_c[0] - (d * head_rx * 0.9 if side else 0), head_c[1] - head_ry * 0.95),
                          (head_rx * 0.42, head_ry * 0.36), hair)
    if app.hat:
        hat = app.hat_bgr
        layer.ellipse((head_c[0], head_c[1] - head_ry * 0.3), (head_rx * 1.08, head_ry * 0.85), hat,
                      start=180, end=360)
        brim_dx = d * head_rx * 0.6 if side else 0.0
        layer.ellipse((head_c[0] + brim_dx, head_c[1] - head_ry * 0.3),
                      (head_rx * (1.25 if side else 1.18), head_ry * 0.16), _shade(hat, 0.8))


def _shade_person(image, mask, light):
    """Side lighting: brighten one side of the figure, darken the other (``light`` in -1..1)."""
    x0, y0, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    x1, y1 = x0 + w, y0 + h
    ramp = np.linspace(-1.0, 1.0, x1 - x0, dtype=np.float32)[None, :] * light * 0.16
    vert = np.linspace(0.06, -0.08, y1 - y0, dtype=np.float32)[:, None]
    a = mask[y0:y1, x0:x1].astype(np.float32)[..., None] / 255.0
    gain = 1.0 + (ramp + vert)[..., None] * a
    image[y0:y1, x0:x1] = np.clip(image[y0:y1, x0:x1].astype(np.float32) * gain, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- cameras
_BACKGROUND_KINDS = ("street", "park", "indoor", "road", "campus", "glass")


@dataclass
class CameraStyle:
    name: str
    kind: str
    panorama: np.ndarray     # (H, 2W, 3) uint8 background strip, cropped per image
    horizon: float           # fraction of the height where the ground starts
    gain: float
    cast: tuple
    noise: float
    blur: float
    light: float             # side-light direction for the figures
    ground_bgr: tuple
    scale: float             # mean figure height / image height (detector framing of this camera)
    x_bias: float            # mean horizontal offset of the figure, in image widths


def _smooth_noise(rng, shape, cells, amplitude):
    small = rng.normal(0.0, 1.0, (max(2, shape[0] // cells), max(2, shape[1] // cells))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC) * amplitude


def _background_panorama(rng, kind, H, W):
    """A camera's scene: facade / foliage / wall above the horizon, pavement / grass / floor below."""
    horizon = float(rng.uniform(0.38, 0.62))
    hy = int(H * horizon)
    img = np.zeros((H, W, 3), np.float32)

    def base(colour):
        return np.asarray(colour, np.float32)

    if kind == "street":
        facades = ((170, 190, 205), (150, 150, 150), (90, 105, 150), (200, 205, 210))
        wall = base(_jitter(facades[rng.integers(len(facades))], rng, 15))
        img[:hy] = wall
        win = base(_jitter((90, 75, 65), rng, 15))
        ww, wh = int(W * rng.uniform(0.06, 0.1)), int(H * rng.uniform(0.08, 0.12))
        px, py = int(ww * rng.uniform(1.6, 2.4)), int(wh * rng.uniform(1.5, 2.0))
        for y in range(int(rng.integers(0, py)) - py, hy - wh // 2, py):
            for x in range(int(rng.integers(0, px)), W, px):
                cv2.rectangle(img, (x, y), (x + ww, y + wh), (wall * 0.8).tolist(), -1)
                cv2.rectangle(img, (x + 2, y + 2), (x + ww - 2, y + wh - 2), win.tolist(), -1)
        ground = base(_jitter((165, 168, 170), rng, 20))
        img[hy:] = ground
        for y in range(hy, H, max(6, H // 18)):
            cv2.line(img, (0, y), (W, y), (ground * 0.85).tolist(), 1)
    elif kind == "park":
        sky = base(_jitter((225, 205, 175), rng, 15))
        img[:hy] = sky
        for _ in range(int(W * H / 900)):
            c = base(_jitter((50, 110, 55), rng, 30))
            cx, cy = rng.uniform(0, W), rng.uniform(-0.1 * H, hy)
            cv2.ellipse(img, (int(cx), int(cy)), (int(rng.uniform(6, 20)), int(rng.uniform(5, 16))), 0, 0, 360,
                        c.tolist(), -1)
        ground = base(_jitter((75, 140, 95), rng, 20))
        img[hy:] = ground
        if rng.random() < 0.6:
            path = base(_jitter((150, 170, 180), rng, 15))
            cv2.fillPoly(img, [np.int32([(W * 0.3, hy), (W * 0.7, hy), (W * 1.1, H), (-W * 0.1, H)])], path.tolist())
    elif kind == "indoor":
        wall = base(_jitter((200, 210, 215), rng, 20))
        img[:hy] = wall
        cv2.rectangle(img, (0, hy - max(3, H // 40)), (W, hy), (wall * 0.7).tolist(), -1)
        t1, t2 = base(_jitter((180, 180, 175), rng, 15)), base(_jitter((140, 140, 138), rng, 15))
        ts = int(rng.integers(10, 22))
        ys, xs = np.mgrid[0:H - hy, 0:W]
        img[hy:] = np.where((((ys // ts) + (xs // ts)) % 2 == 0)[..., None], t1, t2)
        ground = (t1 + t2) / 2
    elif kind == "road":
        img[:hy] = base(_jitter((200, 190, 180), rng, 15))
        for x in range(0, W, int(rng.integers(18, 34))):      # distant buildings
            bh = rng.uniform(0.2, 0.9) * hy
            cv2.rectangle(img, (x, int(hy - bh)), (x + int(rng.integers(14, 30)), hy),
                          base(_jitter((120, 120, 125), rng, 30)).tolist(), -1)
        ground = base(_jitter((85, 85, 88), rng, 10))
        img[hy:] = ground
        ly = int(hy + (H - hy) * rng.uniform(0.3, 0.7))
        for x in range(int(rng.integers(0, 30)), W, 40):
            cv2.rectangle(img, (x, ly), (x + 20, ly + 3), (225, 225, 225), -1)
    elif kind == "campus":
        brick = base(_jitter((60, 80, 150), rng, 20))
        img[:hy] = brick
        bh = int(rng.integers(5, 8))
        for r, y in enumerate(range(0, hy, bh)):
            cv2.line(img, (0, y), (W, y), (brick * 0.7).tolist(), 1)
            off = (r % 2) * bh
            for x in range(off, W, 2 * bh):
                cv2.line(img, (x, y), (x, y + bh), (brick * 0.7).tolist(), 1)
        ground = base(_jitter((175, 180, 185), rng, 15))
        img[hy:] = ground
    else:  # glass facade
        for x in range(0, W, int(rng.integers(16, 28))):
            c = base(_jitter((150, 130, 105), rng, 25))
            img[:hy, x:] = c
            cv2.line(img, (x, 0), (x, hy), (70, 70, 70), 2)
        grad = np.linspace(1.15, 0.85, hy, dtype=np.float32)[:, None, None]
        img[:hy] *= grad
        ground = base(_jitter((130, 135, 140), rng, 15))
        img[hy:] = ground
        for x in range(0, W, 22):
            cv2.line(img, (x, hy), (int(x + (x - W / 2) * 0.6), H), (ground * 0.85).tolist(), 1)
    # surveillance scenes are mostly greyish: pull the scene colours towards their luminance
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * float(rng.uniform(0.35, 0.6))
    img += _smooth_noise(rng, (H, W), 6, 6.0)[..., None]
    img[hy:] *= np.linspace(0.92, 1.05, H - hy, dtype=np.float32)[:, None, None]   # ground recedes
    return np.clip(img, 0, 255).astype(np.uint8), horizon, tuple(int(v) for v in ground)


def make_camera(seed, family, cam, canvas_hw, kind=None):
    """Camera ``cam`` of a dataset family: its scene, illumination gain / colour cast, noise and blur."""
    rng = _rng(seed, _STREAM_CAMERA, _FAMILY[family], cam)
    H, W = canvas_hw
    if kind is None:
        kinds = list(_BACKGROUND_KINDS)
        order = _rng(seed, _STREAM_CAMERA, _FAMILY[family], 0).permutation(len(kinds))
        kind = kinds[order[(cam - 1) % len(kinds)]]
    pano, horizon, ground = _background_panorama(rng, kind, H, 2 * W)
    return CameraStyle(name=f"{family}-c{cam}", kind=kind, panorama=pano, horizon=horizon,
                       gain=float(rng.uniform(0.78, 1.15)),
                       cast=tuple(float(c) for c in rng.uniform(0.9, 1.1, 3)),
                       noise=float(rng.uniform(1.5, 5.0)), blur=float(rng.uniform(0.0, 1.2)),
                       light=float(rng.uniform(-1, 1)), ground_bgr=ground,
                       scale=float(rng.uniform(0.86, 0.93)), x_bias=float(rng.uniform(-0.04, 0.04)))


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


# ----------------------------------------------------------------------------- one image
BODY_PARTS = ("head", "upper", "lower", "shoes")


@dataclass
class RenderedImage:
    holistic: np.ndarray            # (H, W, 3) uint8 BGR, without occluder
    occluded: np.ndarray            # with the occluder (None when not occluded)
    occluder: str                   # "" when not occluded
    covered: float
    view: str
    visible: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(BODY_PARTS, 1.0))
    """Per body part (BODY_PARTS), the share of its pixels the occluder leaves visible (1.0 unoccluded)."""


def body_part_bands(app, foot_y, height):
    """Row ranges [y0, y1) of the body parts of ``draw_pedestrian``'s figure standing on ``foot_y``:
    head (with hat and hair) down to the shoulders, upper body down to the hips, lower body down to the
    ankles, shoes below."""
    h = height * app.height
    top, ankle_y = foot_y - h, foot_y - 0.03 * h
    shoulder_y, hip_y = top + 0.175 * h, ankle_y - app.leg_ratio * h
    shoe_top = ankle_y - 0.01 * h
    return {"head": (top - 0.05 * h, shoulder_y), "upper": (shoulder_y, hip_y), "lower": (hip_y, shoe_top),
            "shoes": (shoe_top, foot_y + 0.05 * h)}


def visible_part_fractions(body_mask, occluder_mask, bands):
    """Per part, the share of the body's pixels in its row band that the occluder leaves visible."""
    body, hidden = body_mask > 127, occluder_mask > 127
    rows = np.arange(body.shape[0])
    out = {}
    for part, (y0, y1) in bands.items():
        band = ((rows >= y0) & (rows < y1))[:, None]
        n = int((body & band).sum())
        out[part] = 1.0 if n == 0 else round(1.0 - float((body & band & hidden).sum()) / n, 4)
    return out


def _cast_shadow(canvas, foot_x, foot_y, height):
    """A soft dark ellipse on the ground under the feet (blurred only in its own box)."""
    H, W = canvas.shape[:2]
    rx, ry, pad = 0.16 * height, 0.025 * height, 8
    x0, x1 = max(0, int(foot_x - rx) - pad), min(W, int(foot_x + rx) + pad + 1)
    y0, y1 = max(0, int(foot_y - ry) - pad), min(H, int(foot_y + ry) + pad + 1)
    shadow = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.ellipse(shadow, (int(foot_x) - x0, int(foot_y) - y0), (int(rx), max(1, int(ry))), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 3.0)
    region = canvas[y0:y1, x0:x1].astype(np.float32) * (1.0 - 0.35 * shadow[..., None])
    canvas[y0:y1, x0:x1] = region.astype(np.uint8)


def render_pedestrian_sample(app, camera, image_seed, out_hw, occluded, with_person=True):
    """Render one bounding box of identity ``app`` seen by ``camera``.

    The scene (background crop, pose, placement, noise) is a function of ``image_seed`` alone, so the
    holistic and the occluded version are identical except for the occluder. ``app`` may be None when
    ``with_person`` is False (Market's background-only junk detections)."""
    rng = np.random.default_rng(np.random.SeedSequence(image_seed))
    H, W = out_hw[0] * SUPERSAMPLE, out_hw[1] * SUPERSAMPLE
    pose = sample_pose(rng)
    off = int(rng.integers(0, camera.panorama.shape[1] - W + 1))
    dy = int(rng.integers(-H // 16, H // 16 + 1))
    canvas = np.roll(camera.panorama[:, off:off + W], dy, axis=0).copy()
    if dy > 0:
        canvas[:dy] = canvas[dy]
    elif dy < 0:
        canvas[dy:] = canvas[dy - 1]
    height = H * (camera.scale + float(rng.uniform(-0.03, 0.03)))
    foot_y = H * float(rng.uniform(0.965, 0.99))
    foot_x = W * (0.5 + camera.x_bias + float(rng.uniform(-0.05, 0.05)))

    # far-away passers-by in the background, out of focus
    if rng.random() < 0.3:
        far = Layer(canvas)
        for _ in range(int(rng.integers(1, 3))):
            fx = float(rng.choice([rng.uniform(-0.1, 0.25), rng.uniform(0.75, 1.1)])) * W
            draw_pedestrian(far, sample_appearance(rng), sample_pose(rng), fx,
                            H * camera.horizon + rng.uniform(0.0, 0.1) * H, height * rng.uniform(0.4, 0.6))
        canvas = cv2.GaussianBlur(canvas, (0, 0), 1.2)

    body = np.zeros((H, W), np.uint8)
    if with_person:
        _cast_shadow(canvas, foot_x, foot_y, height)
        person = Layer(canvas)
        draw_pedestrian(person, app, pose, foot_x, foot_y, height)
        _shade_person(canvas, person.mask, camera.light)
        body = person.mask

    occluder, covered, occluded_canvas = "", 0.0, None
    visible = dict.fromkeys(BODY_PARTS, 1.0)
    if occluded:
        bx, _, bw, _ = cv2.boundingRect((body > 127).astype(np.uint8))
        scene = Scene(H=H, W=W, foot_x=foot_x, foot_y=foot_y, height=height * app.height,
                      body_x0=float(bx), body_x1=float(bx + bw - 1))
        occluder, params, amount, covered = choose_occluder(rng, scene, body)
        occluded_canvas = canvas.copy()
        occ = Layer(occluded_canvas)
        draw_occluder(occ, occluder, params, amount, scene)
        if occluder == "pedestrian":
            _shade_person(occluded_canvas, occ.mask, camera.light)
        visible = visible_part_fractions(body, occ.mask, body_part_bands(app, foot_y, height))

    # camera response: gain, colour cast, sensor noise, optics blur; the same draws for both versions
    gain = camera.gain * float(rng.uniform(0.9, 1.1))
    cast = np.asarray(camera.cast, np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    noise = rng.standard_normal((out_hw[0], out_hw[1], 3), dtype=np.float32) * camera.noise
    blur = camera.blur

    def finish(img):
        x = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
        if blur > 0.2:     # optics blur, in output pixels
            x = cv2.GaussianBlur(x, (0, 0), blur / SUPERSAMPLE)
        x = x.astype(np.float32)
        x = x * (gain * cast)[None, None, :] + noise
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)

    return RenderedImage(holistic=finish(canvas), occluded=None if occluded_canvas is None else finish(occluded_canvas),
                         occluder=occluder, covered=round(float(covered), 4), view=pose.view, visible=visible)


# ----------------------------------------------------------------------------- plans
@dataclass
class ImageSpec:
    """One image to write: which identity, camera and split, and whether it is occluded."""
    split: str
    file: str          # path relative to the layout root
    pid: int
    cam: int           # 1-based camera / style index
    identity: int      # global identity index (appearance seed)
    occluded: bool
    key: int           # image index within the family (image seed)
    holistic_file: str = ""   # where the occluder-free copy goes (query_holistic)
    seed: int = None          # generator seed of this image's identity and scene (None: the benchmark's seed)


def _exact_mask(rng, n, fraction):
    """Exactly round(fraction * n) True entries at random positions."""
    m = np.zeros(n, bool)
    m[rng.permutation(n)[:int(round(fraction * n))]] = True
    return m


def _split_plan(rng, pids, cams, images_per_id, first_identity, frame_counter):
    """(pid, cam, frame, identity) for tracklet-like images of each id over 2-4 cameras."""
    out = []
    for i, pid in enumerate(pids):
        k = int(rng.integers(2, min(4, len(cams)) + 1))
        id_cams = rng.choice(cams, size=k, replace=False)
        for j in range(images_per_id):
            cam = int(id_cams[j % k])
            frame_counter[cam] += int(rng.integers(5, 120))
            out.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return out


def _test_plan(rng, pids, cams, max_queries, gallery_per_id, first_identity, frame_counter):
    """Queries from 1-2 cameras per id, gallery mostly from the other cameras (sometimes one image from
    a query camera, which the evaluation protocol discards)."""
    queries, gallery = [], []
    for i, pid in enumerate(pids):
        nq = int(rng.integers(1, max_queries + 1))
        q_cams = rng.choice(cams, size=min(nq, 2, len(cams) - 1), replace=False)
        other = [c for c in cams if c not in set(q_cams.tolist())]
        for j in range(nq):
            cam = int(q_cams[j % len(q_cams)])
            frame_counter[cam] += int(rng.integers(5, 120))
            queries.append((int(pid), cam, frame_counter[cam], first_identity + i))
        g_cams = rng.choice(other, size=min(len(other), int(rng.integers(2, 4))), replace=False)
        n_g = max(1, gallery_per_id + int(rng.integers(-1, 2)))
        for j in range(n_g):
            cam = int(g_cams[j % len(g_cams)])
            frame_counter[cam] += int(rng.integers(5, 120))
            gallery.append((int(pid), cam, frame_counter[cam], first_identity + i))
        if rng.random() < 0.25:
            cam = int(q_cams[0])
            frame_counter[cam] += int(rng.integers(5, 120))
            gallery.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return queries, gallery


def _distractor_plan(rng, pids, cams, first_identity, frame_counter):
    out = []
    for i, pid in enumerate(pids):
        for _ in range(int(rng.integers(2, 4))):
            cam = int(rng.choice(cams))
            frame_counter[cam] += int(rng.integers(5, 120))
            out.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return out


def _draw_pids(rng, n, max_pid):
    if n > max_pid:
        raise ValueError(f"asked for {n} identities, but this layout's pids must stay in 1..{max_pid}")
    return np.sort(rng.choice(np.arange(1, max_pid + 1), size=n, replace=False))


def plan_occluded_duke(seed, num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id,
                       gallery_images_per_id, num_distractor_ids, train_occluded_fraction, gallery_occluded_fraction):
    """Occluded-Duke: 8 cameras, names ``<pid:04d>_c<cam>_f<frame:07d>.jpg``; every query occluded."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["duke"])
    cams = list(range(1, 9))
    pids = _draw_pids(rng, num_train_ids + num_test_ids + num_distractor_ids, 7140)
    pids = rng.permutation(pids)
    train_pids = np.sort(pids[:num_train_ids])
    test_pids = np.sort(pids[num_train_ids:num_train_ids + num_test_ids])
    dis_pids = np.sort(pids[num_train_ids + num_test_ids:])
    frames = {c: int(rng.integers(100, 5000)) for c in cams}
    train = _split_plan(rng, train_pids, cams, images_per_train_id, 0, frames)
    queries, gallery = _test_plan(rng, test_pids, cams, max_queries_per_id, gallery_images_per_id,
                                  num_train_ids, frames)
    gallery += _distractor_plan(rng, dis_pids, cams, num_train_ids + num_test_ids, frames)

    def name(pid, cam, frame):
        return f"{pid:04d}_c{cam}_f{frame:07d}.jpg"

    specs = []
    train_occ = _exact_mask(rng, len(train), train_occluded_fraction)
    gallery_occ = _exact_mask(rng, len(gallery), gallery_occluded_fraction)
    for split, items, occ in (("bounding_box_train", train, train_occ), ("query", queries, [True] * len(queries)),
                              ("bounding_box_test", gallery, gallery_occ)):
        for (pid, cam, frame, ident), o in zip(items, occ):
            f = name(pid, cam, frame)
            specs.append(ImageSpec(split, f"{split}/{f}", pid, cam, ident, bool(o), len(specs),
                                   holistic_file=f"query_holistic/{f}" if split == "query" else ""))
    return specs


def plan_market(seed, num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id, gallery_images_per_id,
                num_distractor_ids, occluded_fraction, num_junk):
    """Market-1501: 6 cameras, names ``<pid:04d>_c<cam>s<seq>_<frame:06d>_<box:02d>.jpg``, pid -1 junk."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["market"])
    cams = list(range(1, 7))
    pids = rng.permutation(_draw_pids(rng, num_train_ids + num_test_ids + num_distractor_ids, 1501))
    train_pids = np.sort(pids[:num_train_ids])
    test_pids = np.sort(pids[num_train_ids:num_train_ids + num_test_ids])
    dis_pids = np.sort(pids[num_train_ids + num_test_ids:])
    frames = {c: int(rng.integers(100, 5000)) for c in cams}
    seq = {c: int(rng.integers(1, 7)) for c in cams}
    train = _split_plan(rng, train_pids, cams, images_per_train_id, 0, frames)
    queries, gallery = _test_plan(rng, test_pids, cams, max_queries_per_id, gallery_images_per_id,
                                  num_train_ids, frames)
    gallery += _distractor_plan(rng, dis_pids, cams, num_train_ids + num_test_ids, frames)

    def name(pid, cam, frame, box=1):
        return f"{pid:04d}_c{cam}s{seq[cam]}_{frame:06d}_{box:02d}.jpg" if pid >= 0 else \
            f"-1_c{cam}s{seq[cam]}_{frame:06d}_{box:02d}.jpg"

    specs = []
    train_occ = _exact_mask(rng, len(train), occluded_fraction)
    gallery_occ = _exact_mask(rng, len(gallery), occluded_fraction / 2)
    for split, items, occ in (("bounding_box_train", train, train_occ), ("query", queries, [False] * len(queries)),
                              ("bounding_box_test", gallery, gallery_occ)):
        for (pid, cam, frame, ident), o in zip(items, occ):
            specs.append(ImageSpec(split, f"{split}/{name(pid, cam, frame)}", pid, cam, ident, bool(o), len(specs)))
    for j in range(num_junk):        # background-only detections, labelled -1 like Market's junk
        cam = int(rng.choice(cams))
        frames[cam] += int(rng.integers(5, 120))
        specs.append(ImageSpec("bounding_box_test", f"bounding_box_test/{name(-1, cam, frames[cam], 2 + j % 3)}",
                               -1, cam, -1, False, len(specs)))
    return specs


def plan_occluded_reid(seed, num_ids, images_per_id):
    """Occluded-REID raw layout: ``occluded_body_images/<pid:03d>/<pid:03d>_<nn:02d>.tif`` (all occluded)
    and ``whole_body_images/...`` (holistic); 3 capture styles on each side."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["oreid"])
    specs = []
    for pid in range(1, num_ids + 1):
        for split, occluded, cams in (("occluded_body_images", True, (1, 2, 3)),
                                      ("whole_body_images", False, (4, 5, 6))):
            for nn in range(1, images_per_id + 1):
                specs.append(ImageSpec(split, f"{split}/{pid:03d}/{pid:03d}_{nn:02d}.tif", pid,
                                       int(rng.choice(cams)), pid - 1, occluded, len(specs)))
    return specs


# ----------------------------------------------------------------------------- writing
def _prepare_layout_dir(path, overwrite):
    """Create a fresh layout folder. An existing one is replaced only if this generator wrote it
    (it holds our meta.json) and ``overwrite`` is set; a real dataset is never touched."""
    if os.path.exists(path):
        ours = os.path.isfile(os.path.join(path, META_FILE))
        if not ours and os.listdir(path):
            raise FileExistsError(
                f"{path} exists and was not written by {GENERATOR_TAG} (no {META_FILE}); "
                "refusing to replace it. Choose another root.")
        if ours and not overwrite:
            raise FileExistsError(f"{path} already holds a synthetic dataset; pass overwrite=True to replace it.")
        logger.info("Replacing %s", path)
        shutil.rmtree(path)
    os.makedirs(path)


def _write_image(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.endswith(".jpg") else [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW
    if not cv2.imwrite(path, img, params):
        raise OSError(f"could not write {path}")


def _render_family(seed, family, specs, out_hw, targets, camera_seed=None):
    """Render every spec of one family and write it into each target layout.

    ``targets``: list of (layout_root, mode) with mode "as_planned" or "holistic" (DukeMTMC-reID copy).
    Identities and scenes come from ``spec.seed`` (default ``seed``), camera styles from ``camera_seed``
    (default ``seed``). Returns per-target meta image dicts and the appearances by identity index."""
    camera_seed = seed if camera_seed is None else camera_seed
    metas = [dict() for _ in targets]
    appearances, cameras = {}, {}
    need_occluded = any(mode == "as_planned" for _, mode in targets)
    for spec in specs:
        spec_seed = seed if spec.seed is None else spec.seed
        if spec.identity >= 0 and spec.identity not in appearances:
            appearances[spec.identity] = sample_appearance(_rng(spec_seed, _STREAM_IDENTITY, _FAMILY[family],
                                                                spec.identity))
        if spec.cam not in cameras:
            cameras[spec.cam] = make_camera(camera_seed, family, spec.cam,
                                            (out_hw[0] * SUPERSAMPLE, out_hw[1] * SUPERSAMPLE))
        r = render_pedestrian_sample(appearances.get(spec.identity), cameras[spec.cam],
                                     [int(spec_seed), _STREAM_IMAGE, _FAMILY[family], spec.key], out_hw,
                                     occluded=spec.occluded and need_occluded, with_person=spec.pid != -1)
        base = dict(split=spec.split, pid=spec.pid, cam=spec.cam, identity=spec.identity, view=r.view)
        for (root, mode), meta in zip(targets, metas):
            if mode == "holistic":
                _write_image(os.path.join(root, spec.file), r.holistic)
                meta[spec.file] = dict(base, occluder="", covered=0.0)
                continue
            _write_image(os.path.join(root, spec.file), r.occluded if spec.occluded else r.holistic)
            meta[spec.file] = dict(base, occluder=r.occluder, covered=r.covered)
            if spec.occluded:
                meta[spec.file]["visible"] = r.visible
            if spec.holistic_file:
                _write_image(os.path.join(root, spec.holistic_file), r.holistic)
                meta[spec.holistic_file] = dict(base, split=spec.holistic_file.split("/")[0], occluder="",
                                                covered=0.0, holistic_of=spec.file)
    return metas, appearances


def _with_training_split_of(specs, train_specs, train_seed):
    """``specs`` with its training split replaced by the one of ``train_specs`` (drawn with ``train_seed``)."""
    train = [dataclasses.replace(s, seed=int(train_seed)) for s in train_specs if s.split == "bounding_box_train"]
    return train + [s for s in specs if s.split != "bounding_box_train"]


def _summarise(images):
    counts, occluded, covered = {}, {}, {}
    for info in images.values():
        s = info["split"]
        counts[s] = counts.get(s, 0) + 1
        if info["occluder"]:
            occluded[s] = occluded.get(s, 0) + 1
            covered.setdefault(s, []).append(info["covered"])
    ids = {s: len({i["pid"] for i in images.values() if i["split"] == s and i["pid"] != -1}) for s in counts}
    return dict(counts=counts, ids=ids,
                occluded_fraction={s: round(occluded.get(s, 0) / n, 4) for s, n in counts.items()},
                mean_covered={s: round(float(np.mean(v)), 4) for s, v in covered.items()})


def _write_meta(root, layout, seed, out_hw, images, appearances, extra):
    summary = _summarise(images)
    meta = dict(generator=GENERATOR_TAG, version=FORMAT_VERSION, layout=layout, seed=int(seed),
                image_size=list(out_hw), occluder_kinds=list(OCCLUDER_KINDS), summary=summary, **extra,
                identities={str(k): v.attributes() for k, v in sorted(appearances.items())},
                images=dict(sorted(images.items())))
    with open(os.path.join(root, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return summary


def load_meta(layout_root):
    """Read the ``meta.json`` of one synthetic layout folder."""
    path = os.path.join(layout_root, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {layout_root} is not a synthetic layout written by {GENERATOR_TAG}")
    with open(path) as f:
        return json.load(f)


def _normalise_layouts(layout):
    if layout in (None, "all"):
        return list(DEFAULT_LAYOUTS)
    names = [layout] if isinstance(layout, str) else list(layout)
    unknown = [n for n in names if n not in LAYOUT_DIRS]
    if unknown:
        raise ValueError(f"unknown layout(s) {unknown}; expected any of {list(LAYOUT_DIRS)} or 'all'")
    return [n for n in LAYOUT_DIRS if n in names]


def make_synthetic_benchmark(root, seed=0, layout="all", image_size=(128, 64),
                             num_train_ids=70, images_per_train_id=8, num_test_ids=50, max_queries_per_id=2,
                             gallery_images_per_id=4, num_distractor_ids=30,
                             train_occluded_fraction=0.35, gallery_occluded_fraction=0.1,
                             market_occluded_fraction=0.1, market_junk_images=4,
                             oreid_num_ids=50, oreid_images_per_id=5, overwrite=True, train_seed=None,
                             camera_seed=None):
    """Write the synthetic benchmark under ``root`` and return a summary dict.

    Args:
        layout: "all" (Occluded-Duke, Market-1501, Occluded-REID), one name or a list of names from
            ``LAYOUT_DIRS`` ("dukemtmc" adds the holistic DukeMTMC-reID copy of the Occluded-Duke plan).
        image_size: (H, W) of the written images.
        num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id, gallery_images_per_id,
        num_distractor_ids: sizes of the Occluded-Duke and Market-1501 splits (same for both).
        train_occluded_fraction / gallery_occluded_fraction: Occluded-Duke (queries are all occluded).
        market_occluded_fraction: Market training images occluded (half of it in its gallery; no query).
        oreid_num_ids, oreid_images_per_id: Occluded-REID identities and images per id on each side.
        train_seed: Occluded-Duke only: draw the training split from this seed instead of ``seed`` (benchmarks
            that share ``train_seed`` share their training images; their test splits come from their own seed).
        camera_seed: draw the camera styles from this seed instead of ``seed`` (benchmarks of one "world").
    """
    t0 = time.time()
    layouts = _normalise_layouts(layout)
    out_hw = (int(image_size[0]), int(image_size[1]))
    if out_hw[0] < 32 or out_hw[1] < 16:
        raise ValueError(f"image_size {image_size} too small; expected (H, W) >= (32, 16)")
    if min(num_train_ids, num_test_ids, images_per_train_id, max_queries_per_id, gallery_images_per_id) < 1:
        raise ValueError("num_train_ids, num_test_ids, images_per_train_id, max_queries_per_id and "
                         "gallery_images_per_id must all be >= 1")
    os.makedirs(root, exist_ok=True)
    summary = dict(root=os.path.abspath(root), seed=int(seed), image_size=list(out_hw), layouts={})
    sizes = dict(num_train_ids=num_train_ids, images_per_train_id=images_per_train_id, num_test_ids=num_test_ids,
                 max_queries_per_id=max_queries_per_id, gallery_images_per_id=gallery_images_per_id,
                 num_distractor_ids=num_distractor_ids)

    duke_targets = [(n, "as_planned" if n == "occluded_duke" else "holistic")
                    for n in ("occluded_duke", "dukemtmc") if n in layouts]
    if duke_targets:
        fractions = dict(train_occluded_fraction=train_occluded_fraction,
                         gallery_occluded_fraction=gallery_occluded_fraction)
        specs = plan_occluded_duke(seed, **fractions, **sizes)
        if train_seed is not None and int(train_seed) != int(seed):
            specs = _with_training_split_of(specs, plan_occluded_duke(train_seed, **fractions, **sizes), train_seed)
        roots = [os.path.join(root, LAYOUT_DIRS[n]) for n, _ in duke_targets]
        for r in roots:
            _prepare_layout_dir(r, overwrite)
        metas, apps = _render_family(seed, "duke", specs, out_hw, [(r, m) for r, (_, m) in zip(roots, duke_targets)],
                                     camera_seed)
        seeds = dict(train_seed=int(seed if train_seed is None else train_seed),
                     camera_seed=int(seed if camera_seed is None else camera_seed))
        for (name, _), r, meta in zip(duke_targets, roots, metas):
            s = _write_meta(r, LAYOUT_DIRS[name], seed, out_hw, meta, apps, dict(sizes=sizes, **fractions, **seeds))
            summary["layouts"][name] = dict(dir=r, **s)

    if "market1501" in layouts:
        specs = plan_market(seed, occluded_fraction=market_occluded_fraction, num_junk=market_junk_images, **sizes)
        r = os.path.join(root, LAYOUT_DIRS["market1501"])
        _prepare_layout_dir(r, overwrite)
        (meta,), apps = _render_family(seed, "market", specs, out_hw, [(r, "as_planned")], camera_seed)
        s = _write_meta(r, LAYOUT_DIRS["market1501"], seed, out_hw, meta, apps, dict(sizes=sizes))
        summary["layouts"]["market1501"] = dict(dir=r, **s)

    if "occluded_reid" in layouts:
        specs = plan_occluded_reid(seed, oreid_num_ids, oreid_images_per_id)
        r = os.path.join(root, LAYOUT_DIRS["occluded_reid"])
        _prepare_layout_dir(r, overwrite)
        (meta,), apps = _render_family(seed, "oreid", specs, out_hw, [(r, "as_planned")], camera_seed)
        s = _write_meta(r, LAYOUT_DIRS["occluded_reid"], seed, out_hw, meta, apps,
                        dict(sizes=dict(num_ids=oreid_num_ids, images_per_id=oreid_images_per_id)))
        summary["layouts"]["occluded_reid"] = dict(dir=r, **s)

    summary["seconds"] = round(time.time() - t0, 2)
    logger.info("Synthetic benchmark written to %s in %.1f s", root, summary["seconds"])
    return summary


# ----------------------------------------------------------------------------- preview
def _tile(img, label, scale, font_scale=0.38):
    t = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    if label:
        cv2.rectangle(t, (0, t.shape[0] - 14), (t.shape[1], t.shape[0]), (0, 0, 0), -1)
        cv2.putText(t, label, (2, t.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return t


def make_preview(root, out_path, per_row=10, scale=2, seed=0):
    """Contact sheet of the synthetic benchmark under ``root``: rows of train / query / query_holistic /
    gallery samples (plus Market and Occluded-REID rows when present). Returns ``out_path``."""
    rng = np.random.default_rng(seed)
    rows = []

    def pick(images, split, n):
        files = sorted(f for f, i in images.items() if i["split"] == split)
        chosen = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False)) if files else []
        return [files[k] for k in chosen]

    duke = os.path.join(root, LAYOUT_DIRS["occluded_duke"])
    if os.path.isfile(os.path.join(duke, META_FILE)):
        im = load_meta(duke)["images"]
        queries = pick(im, "query", per_row)
        rows.append(("Occ-Duke train", duke, pick(im, "bounding_box_train", per_row), im))
        rows.append(("query (occluded)", duke, queries, im))
        rows.append(("query_holistic", duke, ["query_holistic/" + q.split("/", 1)[1] for q in queries], im))
        rows.append(("gallery", duke, pick(im, "bounding_box_test", per_row), im))
    market = os.path.join(root, LAYOUT_DIRS["market1501"])
    if os.path.isfile(os.path.join(market, META_FILE)):
        im = load_meta(market)["images"]
        rows.append(("Market train", market, pick(im, "bounding_box_train", per_row), im))
    oreid = os.path.join(root, LAYOUT_DIRS["occluded_reid"])
    if os.path.isfile(os.path.join(oreid, META_FILE)):
        im = load_meta(oreid)["images"]
        q = pick(im, "occluded_body_images", per_row)
        rows.append(("OccREID occluded", oreid, q, im))
        rows.append(("OccREID whole", oreid, [f.replace("occluded_body_images", "whole_body_images") for f in q], im))
    if not rows:
        raise FileNotFoundError(f"no synthetic layout with {META_FILE} under {root}")

    label_w = 150
    sheet_rows = []
    tile_hw = None
    for title, base, files, images in rows:
        tiles = []
        for f in files:
            img = cv2.imread(os.path.join(base, f), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(os.path.join(base, f))
            info = images.get(f, {})
            if info.get("occluder"):
                short = {"pedestrian": "person", "signboard": "sign"}.get(info["occluder"], info["occluder"])
                label = f"{short} {int(round(100 * info['covered']))}%"
            else:
                label = f"id{info.get('pid', '?')} c{info.get('cam', '?')}"
            tiles.append(_tile(img, label, scale))
        tile_hw = tile_hw or tiles[0].shape[:2]
        tiles += [np.full(tile_hw + (3,), 255, np.uint8)] * (per_row - len(tiles))
        head = np.full((tile_hw[0], label_w, 3), 255, np.uint8)
        cv2.putText(head, title, (6, tile_hw[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        gap = np.full((tile_hw[0], 3, 3), 255, np.uint8)
        sheet_rows.append(np.hstack([head] + [x for t in tiles for x in (t, gap)]))
        sheet_rows.append(np.full((4, sheet_rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.vstack(sheet_rows)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if not cv2.imwrite(out_path, sheet):
        raise OSError(f"could not write {out_path}")
    return out_path


def ensure_synthetic_benchmark(root, seed=0, layout="occluded_duke"):
    """Write the Occluded-Duke synthetic benchmark under ``root`` unless it is already there (its meta.json
    exists). Returns True when it was written now."""
    if os.path.isfile(os.path.join(root, LAYOUT_DIRS["occluded_duke"], META_FILE)):
        return False
    make_synthetic_benchmark(root, seed=seed, layout=layout)
    return True
