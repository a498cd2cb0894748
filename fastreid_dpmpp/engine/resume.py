"""Exact ``--resume``: every epoch starts from random state that depends on (SEED, epoch) only.

fast-reid checkpoints at epoch ends (``PeriodicCheckpointer``) and stores model, optimiser and LR schedulers, but
not the random state: its identity samplers are endless generators seeded once, when the loader is built, and
python / numpy / torch draw from wherever the process happens to be. A run resumed from epoch ``e`` would therefore
see other batches, flips, crops, drop-path masks and SPT partners than the uninterrupted run.

:class:`EpochSeedHook` removes that difference without storing any random state: before each epoch it reseeds
python, numpy and torch from ``(SEED, epoch, rank)`` and restarts the training sampler from ``(SEED, epoch)``
(shared by all ranks, which slice the same stream). The random state at the start of epoch ``e`` is then the same
whether the process trained epochs ``0..e-1`` itself or loaded them from a checkpoint, so a resumed run reaches the
same weights and metrics as an uninterrupted one (on CPU; see :func:`use_deterministic_cpu_algorithms`).
"""
import logging
import random

import numpy as np
import torch
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

logger = logging.getLogger("fastreid.dpmpp.resume")

__all__ = ["EpochSeedHook", "epoch_seed", "seed_all_generators", "restart_training_stream",
           "use_deterministic_cpu_algorithms"]


def epoch_seed(seed, epoch, rank=None):
    """A 31-bit seed derived from (seed, epoch[, rank]) with numpy's SeedSequence: distinct inputs never share
    a stream the way ``seed + epoch`` would (seed 0 epoch 1 == seed 1 epoch 0)."""
    entropy = [int(seed), int(epoch)] + ([] if rank is None else [int(rank)])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


def seed_all_generators(seed):
    """Seed python's ``random``, numpy's global RNG and torch's default (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _data_loader_owner(trainer):
    """The object holding ``data_loader`` and ``_data_loader_iter`` (fast-reid's SimpleTrainer / AMPTrainer or our
    AlternatingMaskTrainer inside a DefaultTrainer; the trainer itself for a plain SimpleTrainer)."""
    inner = getattr(trainer, "_trainer", trainer)
    if not hasattr(inner, "data_loader") or not hasattr(inner, "_data_loader_iter"):
        raise TypeError(f"{type(trainer).__name__} has no SimpleTrainer-style data_loader / _data_loader_iter: "
                        "EpochSeedHook cannot restart its training stream")
    return inner


def restart_training_stream(trainer, sampler_seed):
    """Reseed the training sampler (fast-reid's samplers keep their seed in ``_seed`` and reseed numpy from it when
    iterated) and replace the trainer's data iterator, so the next batch is the first of a fresh stream.

    With ``DATALOADER.NUM_WORKERS > 0`` this also restarts the workers; their seeds come from torch's generator,
    which the caller has just reseeded."""
    owner = _data_loader_owner(trainer)
    loader = owner.data_loader
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)
    if not hasattr(sampler, "_seed"):
        raise TypeError(f"the training sampler {type(sampler).__name__} keeps no `_seed`: EpochSeedHook only knows "
                        "fast-reid's seeded samplers (DATALOADER.SAMPLER_TRAIN)")
    sampler._seed = int(sampler_seed)
    owner._data_loader_iter = iter(loader)


def _reseed_hook_generators(trainer, seed):
    """Hooks that own a ``torch.Generator`` (the SPT hook's synthesiser) restart it too."""
    for index, hook in enumerate(getattr(trainer, "_hooks", [])):
        generator = getattr(getattr(hook, "synthesizer", None), "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(epoch_seed(seed, index))


def use_deterministic_cpu_algorithms():
    """Ask torch for deterministic kernels (warn instead of failing where an op has none). Costs nothing
    measurable on CPU; on GPU it would also need CUBLAS_WORKSPACE_CONFIG and slows training, so it is CPU-only."""
    torch.use_deterministic_algorithms(True, warn_only=True)


class EpochSeedHook(HookBase):
    """Before every epoch: python / numpy / torch (and hook-owned generators) <- (SEED, epoch, rank); the training
    sampler <- (SEED, epoch). Register it first so that no other hook draws before the reseed."""

    def __init__(self, seed, deterministic_cpu=False):
        if int(seed) < 0:
            raise ValueError(f"EpochSeedHook needs SEED >= 0 (a fixed seed), got {seed}")
        self.seed = int(seed)
        self.deterministic_cpu = bool(deterministic_cpu)

    def before_train(self):
        if self.deterministic_cpu:
            use_deterministic_cpu_algorithms()

    def before_epoch(self):
        epoch = int(self.trainer.epoch)
        rank_seed = epoch_seed(self.seed, epoch, comm.get_rank())
        seed_all_generators(rank_seed)
        _reseed_hook_generators(self.trainer, rank_seed)
        restart_training_stream(self.trainer, epoch_seed(self.seed, epoch))
        logger.debug("epoch %d: random state reseeded from SEED=%d", epoch, self.seed)
