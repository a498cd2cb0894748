"""Shared by every part of the synthetic benchmark generator (``fastreid_dpmpp.data.synthetic``): the
independent random streams, the BGR palettes, and the fixed-point anti-aliased drawing layer."""
import logging
import math

import cv2
import numpy as np

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")


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
