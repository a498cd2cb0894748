"""No evaluation failure loses trained weights.

fast-reid's hooks run EvalHook before PeriodicCheckpointer, so the last epoch's evaluation ran before
``model_final.pth`` was written: an evaluation error (a test camera unknown to the model, a missing test folder,
an out-of-memory gallery) lost every epoch since the last periodic checkpoint. Here:

* :class:`SaveBeforeFinalEvaluation` writes ``model_final.pth`` at the end of the last epoch, before the evaluation
  (fast-reid's PeriodicCheckpointer writes it again afterwards, with the metric);
* :func:`report_evaluation_failures` wraps the EvalHook's function: an error saves the weights if they are not on
  disk yet (``model_final.pth``, or ``model_<epoch>.pth`` mid-training) and adds to the error the command that
  evaluates them (``--eval-only``), and the one that continues training (``--resume``) when it stopped early.
"""
import logging
import os
import shlex
import sys

from fastreid.engine.hooks import EvalHook
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from ..resources import ResourceNotFoundError, tools_dir
from .eval_results import EVAL_RESULTS_FILE

logger = logging.getLogger("fastreid.dpmpp.final_checkpoint")

__all__ = ["SaveBeforeFinalEvaluation", "report_evaluation_failures", "eval_only_command", "with_safe_evaluation"]

FINAL = "model_final"


def _is_last_epoch(trainer):
    return trainer.epoch + 1 >= trainer.max_epoch


class SaveBeforeFinalEvaluation(HookBase):
    """At the end of the last epoch, write ``model_final.pth`` before the EvalHook that follows this hook. An
    ``eval_results.json`` of an earlier evaluation is removed first: once model_final.pth exists, that file exists
    only if the final evaluation finished (runners that skip finished runs read their metrics from it)."""

    def after_epoch(self):
        if _is_last_epoch(self.trainer):
            stale = os.path.join(self.trainer.cfg.OUTPUT_DIR, EVAL_RESULTS_FILE)
            if comm.is_main_process() and os.path.isfile(stale):
                os.remove(stale)
            self.trainer.checkpointer.save(FINAL, epoch=self.trainer.epoch, metric=-1)


def _script():
    """The running training script (tools/train_net.py, train_stage2.py, fast-reid's own train_net.py), else ours
    (e.g. when training was started from Python)."""
    running = sys.argv[0] if sys.argv else ""
    is_training_script = os.path.basename(running).startswith("train") and running.endswith(".py")
    return os.path.abspath(running if is_training_script and os.path.isfile(running) else _default_script())


def _default_script():
    """tools/train_net.py of the checkout (or $FASTREID_DPMPP_TOOLS); the relative path in an install without it."""
    try:
        return os.path.join(tools_dir(), "train_net.py")
    except ResourceNotFoundError:
        return os.path.join("tools", "train_net.py")


def eval_only_command(output_dir, weights):
    """The command that evaluates ``weights`` with the config fast-reid saved in ``output_dir``."""
    return " ".join(shlex.quote(part) for part in (
        "python", _script(), "--config-file", os.path.abspath(os.path.join(output_dir, "config.yaml")),
        "--eval-only", "MODEL.WEIGHTS", os.path.abspath(weights)))


def _saved_weights(trainer):
    """The checkpoint holding the weights being evaluated; written now if it is not on disk yet."""
    output_dir = trainer.cfg.OUTPUT_DIR
    name = FINAL if _is_last_epoch(trainer) else f"model_{trainer.epoch:04d}"
    path = os.path.join(output_dir, name + ".pth")
    if not os.path.isfile(path):
        trainer.checkpointer.save(name, epoch=trainer.epoch, metric=-1)
    return path


def report_evaluation_failures(evaluate, trainer):
    """``evaluate`` (an EvalHook's function) whose errors name the saved weights and the commands to go on."""

    def evaluate_or_explain():
        try:
            return evaluate()
        except Exception as error:
            weights = _saved_weights(trainer)
            note = (f"The evaluation after epoch {trainer.epoch + 1} of {trainer.max_epoch} failed; the trained "
                    f"weights are saved in {os.path.abspath(weights)}. Once the cause is fixed, evaluate them with:\n"
                    f"  {eval_only_command(trainer.cfg.OUTPUT_DIR, weights)}")
            if not _is_last_epoch(trainer):
                note += "\nand continue training with the training command plus --resume."
            error.add_note(note)
            logger.error(note)
            raise

    return evaluate_or_explain


def with_safe_evaluation(hook_list, trainer):
    """``hook_list`` with :class:`SaveBeforeFinalEvaluation` right before fast-reid's EvalHook and the EvalHook's
    errors explained (:func:`report_evaluation_failures`)."""
    hook_list = list(hook_list)
    positions = [i for i, hook in enumerate(hook_list) if isinstance(hook, EvalHook)]
    if not positions:
        return hook_list
    for i in positions:
        hook_list[i]._func = report_evaluation_failures(hook_list[i]._func, trainer)
    hook_list.insert(positions[0], SaveBeforeFinalEvaluation())
    return hook_list
