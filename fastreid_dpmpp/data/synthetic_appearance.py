"""Synthetic pedestrians: identity appearance (clothing, hair, accessories: ``sample_appearance``, palette keys and
their chance probability), poses, and the drawing of a pedestrian on a layer (``draw_pedestrian``)."""
import logging
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .synthetic_common import (
    ACCESSORY_COLOURS, HAIR_COLOURS, LOWER_COLOURS, PATTERNS, SHOE_COLOURS, SKIN_COLOURS, UPPER_COLOURS, _PATTERN_P,
    _jitter, _pick, _shade,
)

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")


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
