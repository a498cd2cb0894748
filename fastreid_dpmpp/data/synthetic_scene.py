"""Cameras and scenes of the synthetic benchmark: per-camera style and background panorama (``make_camera``), and
the rendering of one image (pedestrian, shadow, occluder, visible body parts: ``render_pedestrian_sample``)."""
import dataclasses
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .synthetic_common import Layer, SUPERSAMPLE, _FAMILY, _STREAM_CAMERA, _jitter, _rng
from .synthetic_appearance import _shade_person, draw_pedestrian, sample_appearance, sample_pose
from .synthetic_occluders import Scene, choose_occluder, draw_occluder

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")


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
