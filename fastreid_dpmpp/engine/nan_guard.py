"""Stop training on a NaN / infinite loss with a message naming the loss terms and the iteration, and never write a
checkpoint of non-finite weights.

fast-reid's ``SimpleTrainer._write_metrics`` already raises ``FloatingPointError`` on a non-finite *total* loss
(after backward, before ``optimizer.step()``, so the weights in memory are not touched by that step), but only on
the main process and with the whole loss dict dumped. This hook:

* checks every step's loss terms on each process before fast-reid's gather, and raises
  :class:`NonFiniteLossError` naming the non-finite terms, the iteration and epoch, and the last checkpoint kept;
* checks the weights before fast-reid's EvalHook and PeriodicCheckpointer run at the end of an epoch (a finite loss
  can still step the weights into inf/NaN): a checkpoint of non-finite weights is never written, so the last
  periodic checkpoint (and ``last_checkpoint``) stay the ones ``--resume`` continues from, and no
  ``model_final.pth`` of broken weights appears.

Stage III (``DPMPPTrainer``) and Stage I (``Stage1Trainer``, whose T file is then not written either) use it; each
passes the advice that names its own config keys.
"""
import logging
import math
import os

import torch
from fastreid.engine.train_loop import HookBase

logger = logging.getLogger("fastreid.dpmpp.nan_guard")

__all__ = ["NonFiniteLossError", "NonFiniteWeightsError", "NonFiniteGuard", "non_finite_terms",
           "non_finite_parameters", "with_non_finite_guard", "STAGE3_ADVICE"]

_MAX_LISTED = 10
# --resume restores the optimiser and LR-scheduler state of the checkpoint (base LR included): a lowered BASE_LR
# only takes effect in a new run.
STAGE3_ADVICE = ("Set SOLVER.CLIP_GRADIENTS.ENABLED True and continue with --resume, or lower SOLVER.BASE_LR and "
                 "train again without --resume (--resume restores the learning rate stored in the checkpoint).")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


class NonFiniteWeightsError(FloatingPointError):
    """A parameter holds NaN or infinite values at the end of an epoch."""


def loss_values(loss_dict):
    """``{name: float}`` of a loss dict (one host transfer per term, as fast-reid's own metric logging does)."""
    return {name: float(value.detach().float().sum()) if torch.is_tensor(value) else float(value)
            for name, value in loss_dict.items()}


def non_finite_terms(loss_dict):
    """``{name: value}`` of the loss terms that are NaN or infinite."""
    return {name: value for name, value in loss_values(loss_dict).items() if not math.isfinite(value)}


def non_finite_parameters(model):
    """Names of the parameters that hold a NaN or an infinite value (one reduction per tensor)."""
    named = list(model.named_parameters())
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def _last_checkpoint(trainer):
    checkpointer = getattr(trainer, "checkpointer", None)
    if checkpointer is None or not checkpointer.has_checkpoint():
        return "none was written yet"
    return os.path.basename(checkpointer.get_checkpoint_file())


def _training_loop(trainer):
    """The object whose ``_write_metrics`` logs the losses: DefaultTrainer's inner SimpleTrainer, or the trainer."""
    return getattr(trainer, "_trainer", trainer)


class NonFiniteGuard(HookBase):
    """fast-reid hook: place it before EvalHook and PeriodicCheckpointer (:func:`with_non_finite_guard` does, for
    ``DPMPPTrainer`` and ``Stage1Trainer``)."""

    def __init__(self, advice=STAGE3_ADVICE):
        """``advice``: what the error tells the user to change before ``--resume`` (the stage's own config keys)."""
        self._unwrap = lambda: None
        self.advice = advice

    def before_train(self):
        loop = _training_loop(self.trainer)
        write_metrics = loop._write_metrics

        def checked_write_metrics(loss_dict, *args, **kwargs):
            self.check_losses(loss_dict, getattr(loop, "iter", self.trainer.iter))
            return write_metrics(loss_dict, *args, **kwargs)

        had_own = "_write_metrics" in loop.__dict__
        loop._write_metrics = checked_write_metrics

        def unwrap():
            if had_own:
                loop._write_metrics = write_metrics
            else:
                del loop._write_metrics
        self._unwrap = unwrap

    def after_train(self):
        self._unwrap()

    def check_losses(self, loss_dict, iteration):
        values = loss_values(loss_dict)
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if not bad:
            return
        finite = {k: v for k, v in values.items() if k not in bad}
        raise NonFiniteLossError(
            f"Training stopped: loss term(s) {', '.join(f'{k}={v}' for k, v in bad.items())} became non-finite at "
            f"iteration {iteration} (epoch {self.trainer.epoch})"
            + (f"; the other terms were {', '.join(f'{k}={v:.4g}' for k, v in finite.items())}" if finite else "")
            + f". This step was not applied to the weights. Last checkpoint kept: {_last_checkpoint(self.trainer)} "
            f"(no model_final.pth is written). {self.advice}")

    def after_epoch(self):
        bad = non_finite_parameters(self.trainer.model)
        if bad:
            listed = ", ".join(bad[:_MAX_LISTED]) + (f" (and {len(bad) - _MAX_LISTED} more)"
                                                      if len(bad) > _MAX_LISTED else "")
            raise NonFiniteWeightsError(
                f"Training stopped at the end of epoch {self.trainer.epoch} (iteration {self.trainer.iter}): "
                f"{len(bad)} parameter tensor(s) hold NaN or infinite values: {listed}. No checkpoint of these "
                f"weights was written; last checkpoint kept: {_last_checkpoint(self.trainer)}. {self.advice}")


def with_non_finite_guard(hook_list, advice=STAGE3_ADVICE):
    """``hook_list`` with a :class:`NonFiniteGuard` placed before fast-reid's EvalHook and PeriodicCheckpointer (so it
    checks the weights before they are evaluated or saved at the end of an epoch)."""
    from fastreid.engine.hooks import EvalHook, PeriodicCheckpointer
    guard = NonFiniteGuard(advice)
    savers = [i for i, hook in enumerate(hook_list) if isinstance(hook, (EvalHook, PeriodicCheckpointer))]
    return hook_list[:savers[0]] + [guard] + hook_list[savers[0]:] if savers else hook_list + [guard]
