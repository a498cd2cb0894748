"""Occluded ReID datasets for fast-reid's ``DATASET_REGISTRY`` (SPEC §7).

* ``OccludedDuke``: ``<root>/Occluded_Duke/{bounding_box_train,query,bounding_box_test}`` (or CLIP-ReID's
  ``<root>/dukemtmcreid/Occluded_Duke``), files ``<pid>_c<cam>_f<frame>.jpg``, 8 cameras.
* ``OccludedDukeHolisticQuery``: the same, with the query read from ``Occluded_Duke/query_holistic``
  (written only by the synthetic benchmark: the same queries without their occluders).
* ``OccludedREID``: test only, read from the raw release ``<root>/OccludedREID/occluded_body_images/<pid>/
  <pid>_<nn>.tif`` (query, camera 0) and ``whole_body_images/...`` (gallery, camera 1), so that the
  same-camera filter of the evaluation drops nothing. No renaming step.

fast-reid calls each class as ``cls(root=..., **kwargs)``. As in fast-reid's own Market1501, training
pids and camids are prefixed with ``dataset_name + "_"``; test pids and camids stay integers.
Layout problems raise a :class:`DatasetLayoutError` that names the path and the expected layout. With
``DATASETS.SKIP_BAD_FILES True`` (or ``skip_bad_files=True``) image files whose names do not follow the layout are
skipped with a warning naming them instead.
"""
import logging
import os
import re

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

logger = logging.getLogger("fastreid.dpmpp.data.datasets")

__all__ = [
    "DatasetLayoutError", "DatasetNotFoundError", "FileNamePatternError", "EmptySplitError",
    "OccludedDuke", "OccludedDukeHolisticQuery", "OccludedREID", "set_skip_bad_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SKIP_BAD_FILES_KEY = "DATASETS.SKIP_BAD_FILES"
_MAX_LISTED = 20

# fast-reid builds datasets as cls(root=..., **kwargs) without the config: the trainers set this from
# DATASETS.SKIP_BAD_FILES (data/root.py apply_dataset_root), as fast-reid sets its dataset root.
_skip_bad_files = False


def set_skip_bad_files(flag):
    """Default for the dataset classes' ``skip_bad_files`` (DATASETS.SKIP_BAD_FILES)."""
    global _skip_bad_files
    _skip_bad_files = bool(flag)


class DatasetLayoutError(RuntimeError):
    """The files on disk do not have the layout a dataset class expects."""


class DatasetNotFoundError(DatasetLayoutError):
    """The dataset folder, or one of its split folders, is missing."""


class FileNamePatternError(DatasetLayoutError):
    """An image file name does not follow the dataset's naming pattern."""


class EmptySplitError(DatasetLayoutError):
    """A split folder holds no image."""


def _listing(folder):
    """Sorted visible entries of a folder (sorted: the item order must not depend on the file system)."""
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def is_image_name(name):
    """An image file name: one of IMAGE_EXTENSIONS, in any letter case (0001_c1_f1.JPG, .png, .tif)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def split_entries(dataset, dir_path, names, problems):
    """The image files among ``names`` (entries of ``dir_path``). Other files are skipped with one warning naming
    them; a symbolic link to nothing is added to ``problems`` (it cannot be read)."""
    images, others = [], []
    for name in names:
        path = os.path.join(dir_path, name)
        if os.path.islink(path) and not os.path.exists(path):
            problems.append(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist.")
        elif is_image_name(name):
            images.append(name)
        elif not os.path.isdir(path):
            others.append(path)
    if others:
        listed = "\n".join(f"  {p}" for p in others[:_MAX_LISTED])
        more = f"\n  ... and {len(others) - _MAX_LISTED} more" if len(others) > _MAX_LISTED else ""
        logger.warning("%s: skipping %d file(s) of %s that are not images (%s):\n%s%s", dataset, len(others),
                       dir_path, "/".join(IMAGE_EXTENSIONS), listed, more)
    return images


def locate_dataset_dir(dataset, root, candidates, required, expected_tree):
    """Return the first existing ``root/<candidate>`` folder, checking it holds every ``required`` subfolder.

    Raises DatasetNotFoundError naming every path tried and the expected layout."""
    tried = [os.path.join(root, c) for c in candidates]
    found = next((p for p in tried if os.path.isdir(p)), None)
    layout = f"Expected layout:\n{expected_tree}"
    if found is None:
        hint = ""
        if all(os.path.isdir(os.path.join(root, r)) for r in required):
            hint = (f"\n{root} itself holds {', '.join(required)}: point root (FASTREID_DATASETS or "
                    f"DATASETS.ROOT) at its parent folder instead.")
        raise DatasetNotFoundError(
            f"{dataset}: dataset folder not found under root {root!r} (the root is DATASETS.ROOT, or, when that is "
            f"empty, the FASTREID_DATASETS environment variable, now {os.environ.get('FASTREID_DATASETS')!r}). "
            f"Tried:\n" + "\n".join(f"  {p}" for p in tried) + f"\n{layout}{hint}")
    missing = [r for r in required if not os.path.isdir(os.path.join(found, r))]
    if missing:
        raise DatasetNotFoundError(
            f"{dataset}: {found} has no {', '.join(r + '/' for r in missing)} folder "
            f"(tried {', '.join(os.path.join(found, r) for r in missing)}).\n{layout}")
    return found


def reject_or_skip_bad_files(dataset, dir_path, problems, skip):
    """``problems``: one line per file that does not follow the layout, each naming the file. Raise
    FileNamePatternError naming the first ones, or, when ``skip``, log a warning naming them all."""
    if not problems:
        return
    listed = "\n".join(f"  {p}" for p in problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    if skip:
        logger.warning("%s: skipping %d file(s) of %s that do not follow the layout (%s True):\n%s%s",
                       dataset, len(problems), dir_path, SKIP_BAD_FILES_KEY, listed, more)
        return
    raise FileNamePatternError(
        f"{dataset}: file {problems[0]}" + (f"\n{len(problems) - 1} more file(s) in {dir_path} do not follow "
                                            f"the layout either:\n{listed}{more}" if len(problems) > 1 else "")
        + f"\nRename or remove such files, or set {SKIP_BAD_FILES_KEY} True to skip them with a warning.")


# ----------------------------------------------------------------------------- Occluded-Duke
_DUKE_TREE = """<root>/
  Occluded_Duke/                 (or <root>/dukemtmcreid/Occluded_Duke/)
    bounding_box_train/          <pid>_c<cam>_f<frame>.jpg, e.g. 0005_c2_f0046985.jpg
    query/
    bounding_box_test/"""


@DATASET_REGISTRY.register()
class OccludedDuke(ImageDataset):
    """Occluded-Duke (Miao et al., ICCV 2019): 15,618 train (702 ids) / 2,210 query / 17,661 gallery, 8 cameras.

    All queries and ~10 % of the gallery are occluded. Files match ``([-\\d]+)_c(\\d)``; camid is made 0-based."""
    dataset_name = "occludedduke"
    candidate_dirs = ("Occluded_Duke", os.path.join("dukemtmcreid", "Occluded_Duke"))
    query_subdir = "query"
    pattern = re.compile(r"([-\d]+)_c(\d)")
    num_cameras = 8
    expected_tree = _DUKE_TREE

    def __init__(self, root="datasets", skip_bad_files=None, **kwargs):
        self.root = root
        self.skip_bad_files = _skip_bad_files if skip_bad_files is None else bool(skip_bad_files)
        splits = ("bounding_box_train", self.query_subdir, "bounding_box_test")
        self.dataset_dir = locate_dataset_dir(type(self).__name__, root, self.candidate_dirs, splits,
                                              self.expected_tree)
        self.train_dir, self.query_dir, self.gallery_dir = (os.path.join(self.dataset_dir, s) for s in splits)
        train = self.process_dir(self.train_dir, is_train=True)
        query = self.process_dir(self.query_dir, is_train=False)
        gallery = self.process_dir(self.gallery_dir, is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path, is_train=True):
        """(path, pid, camid) for every image (IMAGE_EXTENSIONS, any case) of ``dir_path``; pid -1 (junk) is
        skipped, other files with a warning naming them."""
        data, problems = [], []
        files = split_entries(type(self).__name__, dir_path, _listing(dir_path), problems)
        for name in files:
            match = self.pattern.match(name)
            if match is None:
                problems.append(f"{os.path.join(dir_path, name)} does not match the naming pattern "
                                f"'{self.pattern.pattern}' (<pid>_c<cam>_f<frame>.jpg, e.g. 0005_c2_f0046985.jpg).")
                continue
            pid, camid = map(int, match.groups())
            if not 1 <= camid <= self.num_cameras:
                problems.append(f"{os.path.join(dir_path, name)} has camera c{camid}; expected "
                                f"c1..c{self.num_cameras} (pattern '{self.pattern.pattern}').")
                continue
            if pid == -1:
                continue
            camid -= 1
            if is_train:
                pid, camid = f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}"
            data.append((os.path.join(dir_path, name), pid, camid))
        reject_or_skip_bad_files(type(self).__name__, dir_path, problems, self.skip_bad_files)
        if not data:
            raise EmptySplitError(f"{type(self).__name__}: split folder {dir_path} holds no <pid>_c<cam>_*.jpg "
                                  f"image ({', '.join(IMAGE_EXTENSIONS)}; {len(_listing(dir_path))} other "
                                  f"entries).\nExpected layout:\n"
                                  f"{self.expected_tree}")
        return data


@DATASET_REGISTRY.register()
class OccludedDukeHolisticQuery(OccludedDuke):
    """Occluded-Duke with the query read from ``query_holistic``: the same queries (pid, camera, frame,
    pose) without occluders. Only the synthetic benchmark writes it; comparing the two measures what the
    occlusion costs. The training set is OccludedDuke's (same ``dataset_name``)."""
    query_subdir = "query_holistic"
    expected_tree = _DUKE_TREE + """
    query_holistic/              (written by tools/make_synthetic_dataset.py only)"""


# ----------------------------------------------------------------------------- Occluded-REID
_OREID_TREE = """<root>/
  OccludedREID/                  (or <root>/Occluded_REID/)
    occluded_body_images/        query
      001/001_01.tif ...         <pid>/<pid>_<nn>.tif (.jpg and .png accepted)
    whole_body_images/           gallery
      001/001_01.tif ...
(the raw release; the renamed query/ + bounding_box_test/ layout of DPM's Rename.py is not read)"""


@DATASET_REGISTRY.register()
class OccludedREID(ImageDataset):
    """Occluded-REID (Zhuo et al., ICME 2018): 200 ids x 5 occluded + 5 whole-body images, test only.

    Trained on Market-1501 (SPEC §7). Query = occluded_body_images with camid 0, gallery =
    whole_body_images with camid 1: the cameras differ, so the same-camera filter drops nothing."""
    dataset_name = "occludedreid"
    candidate_dirs = ("OccludedREID", "Occluded_REID")
    query_subdir, gallery_subdir = "occluded_body_images", "whole_body_images"
    query_camid, gallery_camid = 0, 1
    pattern = re.compile(r"(\d+)_(\d+)\.(tif|tiff|jpg|jpeg|png|bmp|webp)", re.IGNORECASE)
    expected_tree = _OREID_TREE

    def __init__(self, root="datasets", skip_bad_files=None, **kwargs):
        self.root = root
        self.skip_bad_files = _skip_bad_files if skip_bad_files is None else bool(skip_bad_files)
        splits = (self.query_subdir, self.gallery_subdir)
        self.dataset_dir = locate_dataset_dir(type(self).__name__, root, self.candidate_dirs, splits,
                                              self.expected_tree)
        self.query_dir, self.gallery_dir = (os.path.join(self.dataset_dir, s) for s in splits)
        query = self.process_dir(self.query_dir, self.query_camid)
        gallery = self.process_dir(self.gallery_dir, self.gallery_camid)
        super().__init__([], query, gallery, **kwargs)

    def process_dir(self, dir_path, camid):
        """(path, pid, camid) for every ``<pid>/<pid>_<nn>.<ext>`` image under ``dir_path``."""
        data, problems = [], []
        entries = _listing(dir_path)
        for name in split_entries(type(self).__name__, dir_path, entries, problems):
            problems.append(f"{os.path.join(dir_path, name)} lies directly in {dir_path}; expected one folder per "
                            f"identity: <pid>/<pid>_<nn>.tif (pattern '{self.pattern.pattern}').")
        for pid_dir in (e for e in entries if os.path.isdir(os.path.join(dir_path, e))):
            folder = os.path.join(dir_path, pid_dir)
            for name in split_entries(type(self).__name__, folder, _listing(folder), problems):
                match = self.pattern.fullmatch(name)
                if match is None or not pid_dir.isdigit() or int(match.group(1)) != int(pid_dir):
                    problems.append(f"{os.path.join(folder, name)} does not match the naming pattern "
                                    f"'{self.pattern.pattern}' inside its identity folder "
                                    f"(<pid>/<pid>_<nn>.tif, e.g. 001/001_01.tif).")
                    continue
                data.append((os.path.join(folder, name), int(pid_dir), camid))
        reject_or_skip_bad_files(type(self).__name__, dir_path, problems, self.skip_bad_files)
        if not data:
            raise EmptySplitError(f"{type(self).__name__}: split folder {dir_path} holds no <pid>/<pid>_<nn> "
                                  f"image.\nExpected layout:\n{self.expected_tree}")
        return data
