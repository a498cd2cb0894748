"""Camera ids for the SIE table (SPEC §1, Eq. 2), decided when the model is built.

The SIE table S has one row per *training* camera, numbered as fast-reid's train loader numbers them (its
``CommDataset`` sorts the training camids, ``"<dataset_name>_<cam>"``); ``MODEL.VIT.TRAIN_CAMERAS`` records those
names in row order next to ``MODEL.VIT.NUM_CAMERAS``. A test image of dataset X from camera c gets the row of the
training camera ``"<X.dataset_name>_<c>"``. A camera training never saw (a new site, a cross-domain test set, a
growing gallery) gets the **mean** of the trained rows (measured against the alternatives: benchmarks/unseen_cameras.py,
docs/BAD_INPUTS.md); the test camera ids are mapped to rows so that unseen cameras get distinct ids >= NUM_CAMERAS,
which the backbone reads as "unseen". The evaluation's same-camera filter compares these ids: the mapping is
one-to-one, so it removes exactly the gallery images it removed before.

One warning per test set names its unseen cameras when the model is built (:func:`warn_unseen_test_cameras`),
before training starts, not after.
"""
import logging

from fastreid.data.datasets import DATASET_REGISTRY

from .root import apply_dataset_root, dataset_root

logger = logging.getLogger("fastreid.dpmpp.cameras")

__all__ = ["training_cameras", "with_camera_count", "camera_rows", "dataset_prefix", "training_prefix",
           "test_camera_rows", "warn_unseen_test_cameras", "describe_cameras"]


def training_cameras(cfg):
    """Names of the training cameras in SIE-row order (the order of fast-reid's train loader: sorted camids)."""
    cameras = set()
    for name in cfg.DATASETS.NAMES:
        dataset = DATASET_REGISTRY.get(name)(root=dataset_root(cfg), combineall=cfg.DATASETS.COMBINEALL)
        cameras.update(camid for _, _, camid in dataset.train)
    return [str(camid) for camid in sorted(cameras)]   # sorted as the loader sorts them (ints as ints)


def _uses_sie(cfg):
    return "VIT" in cfg.MODEL and bool(cfg.MODEL.VIT.SIE_ENABLED)


def with_camera_count(cfg, check_test_cameras=None):
    """Fill MODEL.VIT.NUM_CAMERAS (and TRAIN_CAMERAS) from the training data when SIE is on and the config leaves it
    at 0; then (``check_test_cameras``, default: when TEST.EVAL_PERIOD > 0) warn once per test set about cameras
    training never saw (they get the mean camera embedding)."""
    if check_test_cameras is None:
        check_test_cameras = cfg.TEST.EVAL_PERIOD > 0
    if not _uses_sie(cfg):
        return cfg
    apply_dataset_root(cfg)
    if cfg.MODEL.VIT.NUM_CAMERAS <= 0:
        names = training_cameras(cfg)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.VIT.NUM_CAMERAS = len(names)
        cfg.MODEL.VIT.TRAIN_CAMERAS = tuple(names)
        cfg.freeze()
        logger.info("Auto-scaling MODEL.VIT.NUM_CAMERAS=%d (training cameras %s)", len(names), ", ".join(names))
    if check_test_cameras:
        warn_unseen_test_cameras(cfg)
    return cfg


def dataset_prefix(dataset_name):
    """The prefix fast-reid's datasets put before training camids (their ``dataset_name`` attribute)."""
    try:
        return getattr(DATASET_REGISTRY.get(dataset_name), "dataset_name", dataset_name.lower())
    except KeyError:
        return dataset_name.lower()


def camera_rows(camids, train_cameras, num_cameras, prefix=None):
    """SIE rows for raw camera ids (ints, or None when unknown) -> (rows, unseen raw ids).

    With ``train_cameras`` (MODEL.VIT.TRAIN_CAMERAS) camera c is looked up as ``"<prefix>_<c>"`` (or ``"<c>"``);
    without it (a hand-set NUM_CAMERAS), camera c is row c when c < ``num_cameras``. Unseen cameras get distinct
    rows ``num_cameras + j`` (j: rank among the unseen ids; None last), which the backbone reads as "mean embedding".
    """
    index = {name: row for row, name in enumerate(train_cameras or ())}

    def seen_row(camid):
        if camid is None or int(camid) < 0:
            return None
        if not index:
            return int(camid) if int(camid) < num_cameras else None
        for name in ((f"{prefix}_{camid}",) if prefix else ()) + (str(camid),):
            if name in index:
                return index[name]
        return None

    seen = {c: seen_row(c) for c in set(camids)}
    unseen = sorted((c for c, row in seen.items() if row is None), key=lambda c: (c is None, c if c is not None else 0))
    extra = {c: num_cameras + j for j, c in enumerate(unseen)}
    return [seen[c] if seen[c] is not None else extra[c] for c in camids], unseen


def training_prefix(train_cameras):
    """The one dataset prefix of the training camera names ("occludedduke" for occludedduke_0, ...), else None."""
    prefixes = {name.rsplit("_", 1)[0] for name in train_cameras if "_" in name}
    return prefixes.pop() if len(prefixes) == 1 and all("_" in name for name in train_cameras) else None


def describe_cameras(camids):
    """'c3, c4' (1-based, as in the file names) for raw 0-based ids; None -> 'unknown camera'."""
    return ", ".join("unknown camera" if c is None else f"c{int(c) + 1}" for c in camids)


def _sie_at_test(cfg):
    return _uses_sie(cfg) and cfg.MODEL.VIT.NUM_CAMERAS > 0 and bool(cfg.MODEL.VIT.get("SIE_AT_TEST", True))


def test_camera_rows(cfg, dataset_name, items):
    """``items`` ((path, pid, camid) of a test set) with camids replaced by SIE rows (see :func:`camera_rows`);
    unchanged when the model adds no camera embedding at test."""
    if not _sie_at_test(cfg):
        return items, []
    rows, unseen = camera_rows([camid for _, _, camid in items], cfg.MODEL.VIT.get("TRAIN_CAMERAS", ()),
                               int(cfg.MODEL.VIT.NUM_CAMERAS), dataset_prefix(dataset_name))
    return [(item[0], item[1], row) + tuple(item[3:]) for item, row in zip(items, rows)], unseen


def warn_unseen_test_cameras(cfg):
    """One warning per test set (DATASETS.TESTS) naming the cameras that training never saw. Returns
    {dataset: [unseen raw camera ids]}. A test set that cannot be read yet is reported, not raised: its
    evaluation will raise the full error."""
    if not _sie_at_test(cfg):
        return {}
    found = {}
    for name in cfg.DATASETS.TESTS:
        try:
            data = DATASET_REGISTRY.get(name)(root=dataset_root(cfg), verbose=False)
            items = data.query + data.gallery
        except Exception as e:  # noqa: BLE001  (any dataset class's error; the evaluation raises it in full)
            logger.warning("Test set %s cannot be read before training (%s: %s); its evaluation will fail unless "
                           "this is fixed.", name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        _, unseen = test_camera_rows(cfg, name, items)
        if unseen:
            found[name] = unseen
            trained = cfg.MODEL.VIT.get("TRAIN_CAMERAS", ()) or [f"row {i}" for i in range(cfg.MODEL.VIT.NUM_CAMERAS)]
            logger.warning(
                "%s: test camera(s) %s are not among the %d training camera(s) (%s): their images get the mean "
                "camera embedding (SIE) of the training cameras. Set MODEL.VIT.SIE_AT_TEST False to use no camera "
                "embedding at test at all.", name, describe_cameras(unseen), cfg.MODEL.VIT.NUM_CAMERAS,
                ", ".join(trained))
    return found
