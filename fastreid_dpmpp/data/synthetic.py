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

The generator is split by concern; this module re-exports their names (import from here):

* ``synthetic_common``      random streams, palettes, the anti-aliased drawing layer;
* ``synthetic_appearance``  identities (clothing, hair, accessories), poses, drawing a pedestrian;
* ``synthetic_occluders``   occluder kinds, parameters, drawing, fitting to a covered fraction;
* ``synthetic_scene``       cameras (style, background) and the rendering of one image;
* ``synthetic_layouts``     image plans of each dataset layout, the writer, ``meta.json``, the preview.
"""
from .synthetic_common import (  # noqa: F401
    ACCESSORY_COLOURS, CAR_COLOURS, COVERAGE_RANGE, HAIR_COLOURS, LOWER_COLOURS, Layer, OCCLUDER_KINDS, PATTERNS,
    SHOE_COLOURS, SIGN_COLOURS, SKIN_COLOURS, SUPERSAMPLE, UPPER_COLOURS, _FAMILY, _STREAM_IDENTITY, _STREAM_IMAGE,
    _STREAM_PLAN, _rng,
)
from .synthetic_appearance import (  # noqa: F401
    Appearance, PALETTE_FIELDS, Pose, draw_pedestrian, palette_key, palette_probability, sample_appearance,
    sample_pose,
)
from .synthetic_occluders import (  # noqa: F401
    Scene, _sample_occluder, choose_occluder, covered_fraction, draw_occluder, fit_occluder,
)
from .synthetic_scene import (  # noqa: F401
    BODY_PARTS, CameraStyle, RenderedImage, body_part_bands, make_camera, render_pedestrian_sample,
    visible_part_fractions,
)
from .synthetic_layouts import (  # noqa: F401
    DEFAULT_LAYOUTS, FORMAT_VERSION, GENERATOR_TAG, ImageSpec, LAYOUT_DIRS, META_FILE, _exact_mask, _write_image,
    ensure_synthetic_benchmark, load_meta, make_preview, make_synthetic_benchmark, plan_market, plan_occluded_duke,
    plan_occluded_reid,
)

__all__ = [
    "LAYOUT_DIRS", "DEFAULT_LAYOUTS", "OCCLUDER_KINDS", "META_FILE",
    "make_synthetic_benchmark", "ensure_synthetic_benchmark", "make_preview", "load_meta",
    "Appearance", "sample_appearance", "render_pedestrian_sample", "BODY_PARTS", "make_camera",
    "PALETTE_FIELDS", "palette_key", "palette_probability",
]
