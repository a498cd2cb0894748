"""Config set-up shared by tools/train_net.py, the stage runners and the pipeline, and the body of
tools/train_net.py (:func:`train_or_evaluate`, the only function here that needs the trainer).

The dataset-root helpers live in :mod:`fastreid_dpmpp.data.root` (re-exported here); the trainer and the other
engine modules import them from there, so nothing below this module imports it back."""
import difflib
import logging
import os
import re

import torch
from fastreid.config import get_cfg
from fastreid.engine import default_setup
from fastreid.utils.env import seed_all_rng

from ..checkpoint import CheckpointReadError, UntrustedCheckpointError
from ..config import add_dpmpp_config
from ..data.root import apply_dataset_root, dataset_root  # noqa: F401  (API: tools and tests import them here)
from ..resources import ResourceNotFoundError

logger = logging.getLogger("fastreid.dpmpp.engine")


def adapt_to_device(cfg):
    """Run a GPU config on a machine without CUDA: MODEL.DEVICE -> cpu and AMP off (both need CUDA)."""
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu, SOLVER.AMP.ENABLED False).")
        cfg.MODEL.DEVICE = "cpu"
        cfg.SOLVER.AMP.ENABLED = False
    return cfg


class UnknownConfigKeyError(KeyError):
    """A config file or command-line option names a key that fast-reid + DPM++ do not define."""

    def __str__(self):  # KeyError would print the message quoted, on one line
        return str(self.args[0])


class ConfigFileNotFoundError(FileNotFoundError):
    """--config-file (or a _BASE_ file it inherits) does not exist."""

    def __str__(self):
        return str(self.args[0])


class MissingWeightsError(FileNotFoundError):
    """MODEL.WEIGHTS is empty where a checkpoint is needed (--eval-only), or names no file."""

    def __str__(self):
        return str(self.args[0])


# Errors whose message says it all: the command-line tools print them as one line, without a traceback.
USER_ERRORS = (UnknownConfigKeyError, ConfigFileNotFoundError, MissingWeightsError, CheckpointReadError,
               UntrustedCheckpointError, ResourceNotFoundError)


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def all_config_keys(cfg, prefix=""):
    """Every leaf key of ``cfg`` in dotted form (``SOLVER.BASE_LR``)."""
    keys = []
    for name, value in cfg.items():
        full = prefix + name
        keys.extend(all_config_keys(value, full + ".") if isinstance(value, dict) else [full])
    return keys


def closest_config_keys(key, cfg, n=3):
    """Valid keys nearest to a mistyped ``key`` (difflib), else the valid keys of its parent node."""
    valid = all_config_keys(cfg)
    close = difflib.get_close_matches(key, valid, n=n, cutoff=0.6)
    if close:
        return close
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    return [k for k in valid if k.startswith(parent) and k.count(".") == key.count(".")][:10]


def unknown_key_error(cfg, error, source):
    """UnknownConfigKeyError naming the key, where it came from and the closest valid keys, or None when ``error``
    is not yacs' unknown-key error."""
    match = _UNKNOWN_KEY.search(str(error.args[0]) if error.args else "")
    if match is None:
        return None
    key = match.group(1)
    suggestions = closest_config_keys(key, cfg)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return UnknownConfigKeyError(f"Unknown config key '{key}' {source}.{hint} (valid keys: fast-reid's "
                                 f"fastreid/config/defaults.py and DPM++'s fastreid_dpmpp/config.py)")


def load_config(config_file, opts=()):
    """fast-reid's default config + the DPM++ keys, merged with ``config_file`` then ``opts``. A mistyped key stops
    with UnknownConfigKeyError naming it and the closest valid keys."""
    cfg = get_cfg()
    add_dpmpp_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigFileNotFoundError(f"config file not found: {os.path.abspath(config_file)} (--config-file "
                                          f"{config_file})")
        try:
            cfg.merge_from_file(config_file)
        except FileNotFoundError as e:
            raise ConfigFileNotFoundError(f"config file {config_file} inherits (_BASE_) a file that does not exist: "
                                          f"{e.filename or e}") from None
        except (KeyError, AssertionError) as e:
            error = unknown_key_error(cfg, e, f"in config file {config_file} (or a _BASE_ file it inherits)")
            if error is None:
                raise
            raise error from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        error = unknown_key_error(cfg, e, "on the command line")
        if error is None:
            raise
        raise error from e
    return adapt_to_device(cfg)


def setup(args):
    """fast-reid's ``setup(args)``: config from file + command-line opts, output dir, logger, seed."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    apply_dataset_root(cfg)
    return cfg


def check_weights_file(path):
    """MODEL.WEIGHTS must name a file (fast-reid asserts "Checkpoint ... not found!" only once the model is built)."""
    if not os.path.isfile(path):
        raise MissingWeightsError(f"MODEL.WEIGHTS: no checkpoint file {os.path.abspath(path)}"
                                  + (" (it is a folder)" if os.path.isdir(path) else ""))


def train_or_evaluate(args, trainer_cls=None):
    """The body of fast-reid's ``tools/train_net.py``: train (``--resume`` continues) or ``--eval-only``."""
    from fastreid.utils.checkpoint import Checkpointer

    from .trainer import DPMPPTrainer, with_camera_count
    trainer_cls = trainer_cls or DPMPPTrainer
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise MissingWeightsError("--eval-only evaluates MODEL.WEIGHTS, which is empty: add "
                                      "MODEL.WEIGHTS <checkpoint, e.g. OUTPUT_DIR/model_final.pth>")
        check_weights_file(cfg.MODEL.WEIGHTS)
        cfg = with_camera_count(cfg)
        model = trainer_cls.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return trainer_cls.test(cfg, model)
    resumes = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if cfg.MODEL.WEIGHTS and not resumes:  # before the model is built, not after
        check_weights_file(cfg.MODEL.WEIGHTS)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_from_command_line(main):
    """Parse fast-reid's default arguments and run ``main(args)`` through fast-reid's ``launch``."""
    from fastreid.engine import default_argument_parser, launch
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None  # the message says it all; no traceback
