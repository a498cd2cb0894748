"""Stage I runner (SPEC §2): prompt learning with fast-reid's training machinery, ending in the T file.

1. The training set is built as fast-reid builds it (DATASETS.NAMES, ``CommDataset`` relabelling), but with the
   test transform; the frozen CLIP image encoder computes v_p of every image once. The features are cached in
   memory and on disk (``OUTPUT_DIR/stage1/image_features.pth``, written atomically) so a resume reuses them.
2. ``Stage1Trainer`` (fast-reid ``TrainerBase`` + ``SimpleTrainer`` + hooks: IterationTimer, LRScheduler,
   PeriodicCheckpointer, PeriodicWriter with CommonMetricPrinter / JSONWriter / TensorboardXWriter) trains the
   ``CLIPPromptLearning`` meta-architecture over random permutations of the cached features. Checkpoints and
   metrics go to ``OUTPUT_DIR/stage1`` so they never mix with Stage III's checkpoints in OUTPUT_DIR.
3. The text features of all identities are written to ``OUTPUT_DIR/STAGE1.OUTPUT`` (:mod:`fastreid_dpmpp.text_prototypes`).
"""
import logging
import math
import os
import time

import torch
from fastreid.data.build import fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from fastreid.engine import hooks
from fastreid.engine.train_loop import SimpleTrainer, TrainerBase
from fastreid.modeling.meta_arch import build_model
from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from fastreid.utils.logger import setup_logger

from ..checkpoint import atomic_torch_save, trusted_torch_load
from ..modeling.meta_arch.prompt_learning import CLIPPromptLearning  # noqa: F401  (registers the meta-arch)
from ..data.root import apply_dataset_root, dataset_root
from ..text_prototypes import identity_keys, save_text_prototypes
from .nan_guard import NonFiniteWeightsError, with_non_finite_guard

logger = logging.getLogger("fastreid.dpmpp.stage1")

__all__ = [
    "STAGE1_SUBDIR", "FEATURE_CACHE_FILE", "stage1_dir", "text_prototypes_path", "feature_cache_path",
    "stage1_config", "build_stage1_train_set", "compute_image_features", "load_or_compute_image_features",
    "CachedFeatureLoader", "WarmupCosineFactor", "build_stage1_optimizer", "build_stage1_scheduler",
    "Stage1Trainer",
]

STAGE1_SUBDIR = "stage1"
FEATURE_CACHE_FILE = "image_features.pth"
WRITER_PERIOD = 200  # iterations, as fast-reid's DefaultTrainer
NON_FINITE_ADVICE = ("Lower STAGE1.BASE_LR (or raise STAGE1.WARMUP_EPOCHS) and run tools/train_stage1.py again "
                     "without --resume (--resume restores the learning rate stored in the checkpoint; the image "
                     "features are cached, so a new run is quick). The text-prototype file (STAGE1.OUTPUT) is "
                     "written only when Stage I ends with finite weights.")


# ----------------------------------------------------------------------------- paths and config
def stage1_dir(cfg):
    """Checkpoints, metrics and the feature cache of Stage I."""
    return os.path.join(cfg.OUTPUT_DIR, STAGE1_SUBDIR)


def text_prototypes_path(cfg):
    """Where Stage I writes T (an absolute STAGE1.OUTPUT is used as is)."""
    return os.path.join(cfg.OUTPUT_DIR, cfg.STAGE1.OUTPUT)


def feature_cache_path(cfg):
    return os.path.join(stage1_dir(cfg), FEATURE_CACHE_FILE)


def stage1_config(cfg, num_classes):
    """A frozen copy of ``cfg`` that builds the Stage I model: META_ARCHITECTURE CLIPPromptLearning, C classes."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "CLIPPromptLearning"
    cfg.MODEL.HEADS.NUM_CLASSES = int(num_classes)
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------- image features
def build_stage1_train_set(cfg):
    """fast-reid's training set (same items and pid relabelling as its train loader) with the *test* transform."""
    apply_dataset_root(cfg)
    items = []
    for name in cfg.DATASETS.NAMES:
        dataset = DATASET_REGISTRY.get(name)(root=dataset_root(cfg), combineall=cfg.DATASETS.COMBINEALL)
        if comm.is_main_process():
            dataset.show_train()
        items.extend(dataset.train)
    if not items:
        raise ValueError(f"the training sets {list(cfg.DATASETS.NAMES)} (DATASETS.NAMES) under "
                         f"'{dataset_root(cfg)}' hold no images")
    return CommDataset(items, build_transforms(cfg, is_train=False), relabel=True)


@torch.no_grad()
def compute_image_features(encode_image, dataset, batch_size, device, pixel_mean, pixel_std, num_workers=0):
    """v_p of every image of ``dataset`` (in order) with the frozen ``encode_image``: (N, D_t) float CPU features and
    (N,) labels. Images arrive as 0-255 tensors (fast-reid transforms) and are normalised with ``pixel_mean/std``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=fast_batch_collator)
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    features, labels = [], []
    start, num_batches = time.perf_counter(), len(loader)
    log_every = max(1, num_batches // 10)
    for index, batch in enumerate(loader):
        images = (batch["images"].to(device).float() - mean) / std
        features.append(encode_image(images).float().cpu())
        labels.append(torch.as_tensor(batch["targets"]).long())
        if (index + 1) % log_every == 0 or index + 1 == num_batches:
            done = sum(len(f) for f in features)
            elapsed = time.perf_counter() - start
            logger.info("Stage I image features: %d/%d images (%.1f s, %.1f img/s)", done, len(dataset), elapsed,
                        done / max(elapsed, 1e-9))
    return torch.cat(features), torch.cat(labels)


def _cache_metadata(cfg, train_set):
    return {
        "img_paths": [str(item[0]) for item in train_set.img_items],
        "identities": identity_keys(train_set.pids),
        "weights": str(cfg.MODEL.VIT.WEIGHTS),
        "arch": str(cfg.MODEL.VIT.ARCH),
        "image_size": [int(v) for v in cfg.INPUT.SIZE_TEST],
        "stride": [int(v) for v in cfg.MODEL.BACKBONE.STRIDE_SIZE],
    }


def _read_valid_cache(path, metadata):
    """The cached (features, labels) if the file matches the current training set and encoder, else None."""
    if not os.path.isfile(path):
        return None
    cache = trusted_torch_load(path, what="Stage I image-feature cache")
    stale = [key for key, value in metadata.items() if cache.get(key) != value]
    if stale or len(cache.get("features", ())) != len(metadata["img_paths"]):
        logger.warning("Ignoring the image-feature cache %s: it was computed for another %s; recomputing",
                       path, ", ".join(stale) or "number of images")
        return None
    logger.info("Loaded %d cached image features from %s", len(cache["features"]), path)
    return cache["features"].float(), cache["labels"].long()


def load_or_compute_image_features(cfg, train_set, cache_path=None):
    """v_p of every training image, from the on-disk cache when it is valid, else computed once (SPEC §2) and
    written atomically. Returns (features (N, D_t), labels (N,))."""
    cache_path = cache_path or feature_cache_path(cfg)
    metadata = _cache_metadata(cfg, train_set)
    cached = _read_valid_cache(cache_path, metadata)
    if cached is not None:
        return cached
    if tuple(cfg.INPUT.SIZE_TEST) != tuple(cfg.INPUT.SIZE_TRAIN):
        raise ValueError(f"Stage I encodes the training images with the test transform, so INPUT.SIZE_TEST "
                         f"{list(cfg.INPUT.SIZE_TEST)} must equal INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)} "
                         f"(the CLIP patch grid is built for SIZE_TRAIN)")
    from ..modeling.backbones.clip_vit import build_clip_model
    from ..modeling.module_utils import freeze_model
    device = torch.device(cfg.MODEL.DEVICE)
    visual_clip = freeze_model(build_clip_model(cfg)).to(device)
    logger.info("Computing Stage I image features of %d training images with the frozen image encoder",
                len(train_set))
    features, labels = compute_image_features(
        visual_clip.encode_image, train_set, batch_size=cfg.TEST.IMS_PER_BATCH, device=device,
        pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, num_workers=cfg.DATALOADER.NUM_WORKERS)
    del visual_clip
    if comm.is_main_process():
        atomic_torch_save(dict(metadata, features=features, labels=labels), cache_path)
        logger.info("Saved the image-feature cache to %s", cache_path)
    return features, labels


# ----------------------------------------------------------------------------- data loader over cached features
class CachedFeatureLoader:
    """Endless stream of batches ``{"features", "targets"}`` over cached features: each epoch is a new random
    permutation (seeded by ``seed + epoch``) cut into ``len(self)`` batches, the last one possibly smaller, so every
    image is seen once per epoch (CLIP-ReID stage 1). fast-reid's SimpleTrainer calls ``iter()`` once; the stream
    starts at ``start_epoch``, which the trainer sets after resuming."""

    def __init__(self, features, labels, batch_size, seed=0, start_epoch=0):
        if len(features) != len(labels) or len(features) == 0:
            raise ValueError(f"need as many labels as features (>0), got {len(features)} and {len(labels)}")
        if int(batch_size) < 1:
            raise ValueError(f"STAGE1.IMS_PER_BATCH must be >= 1, got {batch_size}")
        self.features, self.labels = features, labels
        self.batch_size, self.seed, self.start_epoch = int(batch_size), int(seed), int(start_epoch)

    def __len__(self):
        return math.ceil(len(self.features) / self.batch_size)

    def permutation(self, epoch):
        generator = torch.Generator().manual_seed(self.seed + int(epoch))
        return torch.randperm(len(self.features), generator=generator)

    def __iter__(self):
        epoch = self.start_epoch
        while True:
            for index in self.permutation(epoch).split(self.batch_size):
                yield {"features": self.features[index], "targets": self.labels[index]}
            epoch += 1


# ----------------------------------------------------------------------------- optimiser and schedule
class WarmupCosineFactor:
    """LR factor at epoch e (CLIP-ReID's cosine schedule with warm-up [pred]):
    e < W: f0 + (1 - f0)·e/W (linear warm-up from WARMUP_FACTOR f0);
    else:  fmin + (1 - fmin)·(1 + cos(π·e/E))/2 (cosine over the MAX_EPOCH E epochs, down to MIN_LR_FACTOR fmin).
    A plain-data callable, so LambdaLR's state dict round-trips through ``weights_only`` loading."""

    def __init__(self, max_epoch, warmup_epochs=0, warmup_factor=0.01, min_factor=0.0):
        if int(max_epoch) < 1 or int(warmup_epochs) < 0:
            raise ValueError(f"STAGE1.MAX_EPOCH must be >= 1 and STAGE1.WARMUP_EPOCHS >= 0, got {max_epoch}, "
                             f"{warmup_epochs}")
        self.max_epoch, self.warmup_epochs = int(max_epoch), int(warmup_epochs)
        self.warmup_factor, self.min_factor = float(warmup_factor), float(min_factor)

    def __call__(self, epoch):
        if epoch < self.warmup_epochs:
            return self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epochs
        progress = min(epoch, self.max_epoch) / self.max_epoch
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_stage1_optimizer(cfg, model):
    """Adam over the trainable parameters only (the prompt context), STAGE1.BASE_LR / WEIGHT_DECAY."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.STAGE1.BASE_LR, weight_decay=cfg.STAGE1.WEIGHT_DECAY)


def build_stage1_scheduler(cfg, optimizer):
    """Epoch-stepped warm-up + cosine (:class:`WarmupCosineFactor`)."""
    factor = WarmupCosineFactor(cfg.STAGE1.MAX_EPOCH, cfg.STAGE1.WARMUP_EPOCHS, cfg.STAGE1.WARMUP_FACTOR,
                                cfg.STAGE1.MIN_LR_FACTOR)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- trainer
class Stage1Trainer(TrainerBase):
    """fast-reid-style trainer for Stage I: ``Stage1Trainer(cfg)``, ``resume_or_load(resume)``, ``train()`` -> T path.

    Same life cycle and hooks as fast-reid's DefaultTrainer (without evaluation): the train "loader" iterates the
    cached image features; checkpoints (prompt context, optimizer, LR scheduler, epoch) go to OUTPUT_DIR/stage1
    every SOLVER.CHECKPOINT_PERIOD epochs and at the end; ``--resume`` continues from the last one.
    """

    def __init__(self, cfg):
        super().__init__()
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        if comm.get_world_size() > 1:
            # Kept single-process on purpose: only the prompt context trains, on cached features (minutes on one
            # device), and a rank-0-only run would deadlock in fast-reid's per-step metric gather.
            raise RuntimeError(
                f"Stage I prompt learning runs in a single process, got world size {comm.get_world_size()}: run "
                "tools/train_stage1.py without --num-gpus (or --num-gpus 1); it trains the prompt context alone on "
                "cached image features. Stages II and III (train_stage2.py, train_net.py) run with --num-gpus N.")
        self.output_dir = stage1_dir(cfg)
        os.makedirs(self.output_dir, exist_ok=True)

        train_set = build_stage1_train_set(cfg)
        self.identities = identity_keys(train_set.pids)
        features, labels = load_or_compute_image_features(cfg, train_set)
        cfg = stage1_config(cfg, num_classes=len(self.identities))
        model = self.build_model(cfg)
        if model.embed_dim != features.shape[1]:
            raise ValueError(f"the cached image features have {features.shape[1]} dimensions but the text tower "
                             f"projects to {model.embed_dim}; delete {feature_cache_path(cfg)} and rerun")
        optimizer = build_stage1_optimizer(cfg, model)
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
        data_loader = CachedFeatureLoader(features, labels, cfg.STAGE1.IMS_PER_BATCH, seed=seed)
        self._trainer = SimpleTrainer(model, data_loader, optimizer, None)

        self.iters_per_epoch = len(data_loader)
        self.scheduler = {"lr_sched": build_stage1_scheduler(cfg, optimizer)}
        self.checkpointer = Checkpointer(model, self.output_dir, save_to_disk=comm.is_main_process(),
                                         optimizer=optimizer, **self.scheduler)
        self.start_epoch = 0
        self.max_epoch = int(cfg.STAGE1.MAX_EPOCH)
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.warmup_iters = 0   # the warm-up is part of the epoch-level schedule
        self.delay_epochs = 0
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # fast-reid's DefaultTrainer exposes these of its SimpleTrainer; the hooks read them.
    model = property(lambda self: self._trainer.model)
    data_loader = property(lambda self: self._trainer.data_loader)
    optimizer = property(lambda self: self._trainer.optimizer)
    grad_scaler = property(lambda self: None)

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("Stage I model CLIPPromptLearning: %d identities, %d trainable parameters (prompt context)",
                    model.num_classes, trainable)
        return model

    def build_hooks(self):
        ret = [hooks.IterationTimer(), hooks.LRScheduler(self.optimizer, self.scheduler)]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicWriter(self.build_writers(), WRITER_PERIOD))
        # NaN / inf loss or weights: stop before the step is applied and before a checkpoint of them is written
        return with_non_finite_guard(ret, advice=NON_FINITE_ADVICE)

    def build_writers(self):
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.output_dir, "metrics.json")),
            TensorboardXWriter(self.output_dir),
        ]

    def resume_or_load(self, resume=True):
        """Resume from OUTPUT_DIR/stage1's last checkpoint when asked and present; otherwise start from scratch
        (MODEL.WEIGHTS belongs to Stage III and is not loaded here)."""
        checkpoint = self.checkpointer.resume_or_load("", resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_epoch = checkpoint.get("epoch", -1) + 1
        self.data_loader.start_epoch = self.start_epoch

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def train(self):
        """Train from ``start_epoch`` to STAGE1.MAX_EPOCH, then write T; returns the T file's path."""
        super().train(self.start_epoch, self.max_epoch, self.iters_per_epoch)
        return self.write_text_prototypes()

    def write_text_prototypes(self, path=None):
        """T = text features of all identities in label order (Eq. 12), saved with C and the identity keys."""
        path = path or text_prototypes_path(self.cfg)
        if comm.is_main_process():
            prototypes = self.model.all_text_features()
            if not torch.isfinite(prototypes).all():
                # a last step that diverged (finite but huge context: the guard's weight check passes) or a
                # checkpoint written before the guard existed (--eval-only)
                rows = (~torch.isfinite(prototypes)).any(dim=1).nonzero()[:, 0].tolist()
                bad = [self.identities[i] for i in rows]
                raise NonFiniteWeightsError(
                    f"Stage I text prototypes of {len(bad)} of {len(self.identities)} identities are NaN or "
                    f"infinite (e.g. {', '.join(bad[:5])}): {path} was not written. The prompt context (checkpoints "
                    f"in {self.output_dir}) has diverged. {NON_FINITE_ADVICE}")
            save_text_prototypes(path, prototypes, self.identities)
        return path
