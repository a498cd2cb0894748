"""Captions for synthetic pedestrian images, written from what the generator knows about each image.

A caption names the identity's clothing and accessories (its ``Appearance``) and the view, and only what
can be seen: an attribute on a body part that the occluder hides (less than ``VISIBLE_MIN`` of the part's
pixels left) is left out, as a person writing a caption would leave it out. ``name_occluder`` adds what
hides the person ("partly hidden behind a parked car"). Sentence shapes and attribute order vary with the
caption's own random stream, so the text encoder does not learn one template.
"""
import numpy as np

__all__ = ["VISIBLE_MIN", "caption", "visible_attributes", "TEMPLATES"]

VISIBLE_MIN = 0.5

_COLOUR_WORDS = {"lightjeans": "light blue", "jeans": "blue", "darkbrown": "dark brown", "navy": "navy blue",
                 "khaki": "khaki"}
_OCCLUDER_PHRASES = {
    "pedestrian": ("partly hidden behind another pedestrian", "with someone walking in front"),
    "car": ("partly hidden behind a parked car", "behind a car"),
    "pole": ("partly hidden behind a pole", "behind a post"),
    "signboard": ("partly hidden behind a signboard", "behind a sign"),
    "bush": ("partly hidden behind a bush", "behind some bushes"),
    "boxes": ("partly hidden behind stacked boxes", "behind a pile of boxes"),
    "bin": ("partly hidden behind a bin", "behind a rubbish bin"),
}
_VIEW_PHRASES = {"front": ("seen from the front", "facing the camera"),
                 "back": ("seen from behind", "walking away from the camera"),
                 "left": ("seen from the side, facing left", "walking to the left"),
                 "right": ("seen from the side, facing right", "walking to the right")}


def _colour(name):
    return _COLOUR_WORDS.get(name, name)


def _hair(app):
    if app.hair_style == "bald":
        return "a bald head"
    style = {"short": "short", "long": "long", "bun": ""}[app.hair_style]
    words = " ".join(w for w in (style, _colour(app.hair), "hair") if w)
    return words + (" tied in a bun" if app.hair_style == "bun" else "")


def _upper(app):
    sleeves = "long-sleeved" if app.sleeves == "long" else "short-sleeved"
    first, second = _colour(app.upper), _colour(app.upper2)
    if app.pattern == "stripes":
        return f"a {sleeves} {first} top with {second} stripes"
    if app.pattern == "checks":
        return f"a {sleeves} {first} and {second} checked shirt"
    if app.pattern == "two-tone":
        return f"a {sleeves} top, {first} above and {second} below"
    return f"a {sleeves} {first} top"


def _lower(app):
    if app.lower_style == "trousers":
        return f"{_colour(app.lower)} jeans" if app.lower in ("jeans", "lightjeans") else f"{_colour(app.lower)} trousers"
    return f"{'a' if app.lower_style == 'skirt' else ''} {_colour(app.lower)} {app.lower_style}".strip()


def visible_attributes(app, visible):
    """Phrases for the attributes on visible parts, keyed by kind: hair, hat, upper, backpack, bag, lower, shoes."""
    seen = {part: frac >= VISIBLE_MIN for part, frac in visible.items()}
    out = {}
    if seen["head"]:
        out["hair"] = _hair(app)
        if app.hat:
            out["hat"] = f"a {_colour(app.hat)} cap"
    if seen["upper"]:
        out["upper"] = _upper(app)
        if app.backpack:
            out["backpack"] = f"a {_colour(app.backpack)} backpack"
        if app.bag:
            out["bag"] = f"a {_colour(app.bag)} shoulder bag"
    if seen["lower"]:
        out["lower"] = _lower(app)
    if seen["shoes"]:
        out["shoes"] = f"{_colour(app.shoes)} shoes"
    return out


def _join(items):
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _wearing(attrs, rng):
    worn = [attrs[k] for k in ("upper", "lower", "shoes", "hat") if k in attrs]
    if len(worn) > 1 and rng.random() < 0.3:
        worn = list(rng.permutation(worn))
    return _join(worn)


def _carrying(attrs):
    return _join([attrs[k] for k in ("backpack", "bag") if k in attrs])


def _t_photo(attrs, view, occ, rng):
    parts = [f"a photo of a person with {attrs['hair']}" if "hair" in attrs else "a photo of a person"]
    if _wearing(attrs, rng):
        parts.append(f"wearing {_wearing(attrs, rng)}")
    if _carrying(attrs):
        parts.append(f"carrying {_carrying(attrs)}")
    return ", ".join(parts + [p for p in (occ, view) if p])


def _t_pedestrian(attrs, view, occ, rng):
    head = "a pedestrian" + (f" {view}" if view else "")
    body = _wearing(attrs, rng)
    text = f"{head} in {body}" if body else head
    extras = [attrs["hair"]] if "hair" in attrs else []
    if _carrying(attrs):
        extras.append(_carrying(attrs))
    if extras:
        text += ", with " + _join(extras)
    return text + (f", {occ}" if occ else "")


def _t_list(attrs, view, occ, rng):
    keys = [k for k in ("hair", "hat", "upper", "lower", "shoes", "backpack", "bag") if k in attrs]
    if rng.random() < 0.5:
        keys = list(rng.permutation(keys))
    items = [attrs[k] for k in keys] + [p for p in (view, occ) if p]
    return "person: " + "; ".join(items) if items else "person"


def _t_someone(attrs, view, occ, rng):
    text = "someone" + (f" {occ}" if occ else "")
    body = _wearing(attrs, rng)
    if body:
        text += f" wearing {body}"
    if _carrying(attrs):
        text += f" and carrying {_carrying(attrs)}"
    if "hair" in attrs:
        text += f"; {attrs['hair']}"
    return text + (f", {view}" if view else "")


def _t_dressed(attrs, view, occ, rng):
    lead = f"{view}, " if view else ""
    body = _wearing(attrs, rng) or "clothes that are hidden"
    text = f"{lead}a person dressed in {body}"
    if "hair" in attrs:
        text += f" who has {attrs['hair']}"
    if _carrying(attrs):
        text += f", {_carrying(attrs)}"
    return text + (f"; {occ}" if occ else "")


TEMPLATES = (_t_photo, _t_pedestrian, _t_list, _t_someone, _t_dressed)


def caption(app, view, visible, occluder="", name_occluder=True, rng=None):
    """One caption of an image of identity ``app`` seen from ``view`` with per-part ``visible`` fractions
    (``RenderedImage.visible``); ``occluder`` is the occluder kind ("" = none), named when
    ``name_occluder``. ``rng``: a numpy Generator choosing the template and the phrasing."""
    rng = rng if rng is not None else np.random.default_rng()
    attrs = visible_attributes(app, visible)
    view_text = _VIEW_PHRASES[view][int(rng.integers(2))] if rng.random() < 0.7 else ""
    occ_text = _OCCLUDER_PHRASES[occluder][int(rng.integers(2))] if occluder and name_occluder else ""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text = template(attrs, view_text, occ_text, rng)
    return text[0].upper() + text[1:] + "."
