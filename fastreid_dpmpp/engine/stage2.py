"""Stage II runner (SPEC §3): SPS pre-training with fast-reid's DefaultTrainer, ending in the SPS checkpoint.

Choices, so that fast-reid's trainer (one optimizer, one scheduler dict, one Checkpointer) runs two optimisers:

* :class:`CompositeOptimizer` holds the two torch optimisers of SPEC §3 and looks like one optimizer to fast-reid
  (``param_groups``, ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``):
  - ``main``: backbone + head parameters with fast-reid's per-parameter groups (SOLVER.BASE_LR, BIAS_LR_FACTOR,
    HEADS_LR_FACTOR, WEIGHT_DECAY*), optimiser SOLVER.OPT (Adam in the configs, SPEC §3);
  - ``decision``: the decision layer W_d (``SPSModel.selector``), SGD at STAGE2.DECISION_LR with momentum
    STAGE2.DECISION_MOMENTUM and weight decay SOLVER.WEIGHT_DECAY.
* fast-reid's LR schedule (SOLVER.WARMUP_* linear warm-up, then SOLVER.SCHED) drives ``main`` only; the decision
  layer keeps its constant LR (as DPM's mask optimiser). The checkpoints hold both optimisers' states and the
  schedulers, so ``--resume`` restores everything.
* Checkpoints, metrics and fast-reid's ``model_final.pth`` go to ``OUTPUT_DIR/stage2`` (like Stage I's
  ``OUTPUT_DIR/stage1``), so a single OUTPUT_DIR can hold all three stages. At the end the SPS checkpoint
  ``OUTPUT_DIR/STAGE2.OUTPUT`` is written atomically (the hand-over file to Stage III: its format, writer, reader
  and errors are in ``engine/sps_checkpoint.py``). Stage III (SPT.SPS_WEIGHTS) reads that file; it also accepts
  ``stage2/model_final.pth``.
* Evaluation (TEST.EVAL_PERIOD, optional) uses fast-reid's stock ReidEvaluator on the SPS model's descriptor;
  TEST.EVAL_PERIOD 0 trains without evaluation.
"""
import logging
import os

import torch
from fastreid.engine import hooks
from fastreid.engine.train_loop import TrainerBase
from fastreid.evaluation import ReidEvaluator
from fastreid.solver.build import build_lr_scheduler, get_default_optimizer_params, maybe_add_gradient_clipping
from fastreid.utils import comm

from ..modeling.meta_arch.sps_arch import SPSModel  # noqa: F401  (registers the meta-arch)
from ..modeling.module_utils import unwrap_model
from .sps_checkpoint import BACKBONE_KEYS, backbone_config, save_sps_checkpoint  # noqa: F401  (API)
from .trainer import DPMPPTrainer

logger = logging.getLogger("fastreid.dpmpp.stage2")

__all__ = [
    "STAGE2_SUBDIR", "BACKBONE_KEYS", "stage2_dir", "sps_checkpoint_path", "stage2_config", "CompositeOptimizer",
    "build_stage2_optimizer", "Stage2Trainer",
]

STAGE2_SUBDIR = "stage2"


# ----------------------------------------------------------------------------- paths and config
def stage2_dir(cfg):
    """Checkpoints and metrics of Stage II."""
    return os.path.join(cfg.OUTPUT_DIR, STAGE2_SUBDIR)


def sps_checkpoint_path(cfg):
    """Where Stage II writes the SPS checkpoint (an absolute STAGE2.OUTPUT is used as is)."""
    return os.path.join(cfg.OUTPUT_DIR, cfg.STAGE2.OUTPUT)


def stage2_config(cfg):
    """A frozen copy of ``cfg`` that trains Stage II: META_ARCHITECTURE SPSModel, SPT and DPM's alternating update
    off, OUTPUT_DIR/stage2."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "SPSModel"
    cfg.SPT.ENABLED = False
    cfg.MODEL.DPMPP.ALTERNATE_UPDATE = False
    cfg.OUTPUT_DIR = stage2_dir(cfg)
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------- optimisers
class CompositeOptimizer:
    """Named torch optimisers stepped together, seen by fast-reid's trainer, hooks and Checkpointer as one.

    ``param_groups`` is the concatenation of the members' groups (the same dict objects, so changing an LR there
    changes the member); ``state_dict()`` is ``{name: member.state_dict()}``.
    """

    def __init__(self, **optimizers):
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers = dict(optimizers)

    def __getitem__(self, name):
        return self.optimizers[name]

    @property
    def param_groups(self):
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @property
    def state(self):
        merged = {}
        for optimizer in self.optimizers.values():
            merged.update(optimizer.state)
        return merged

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"CompositeOptimizer.load_state_dict: the checkpoint holds optimizers "
                             f"{sorted(state_dict)}, expected {sorted(self.optimizers)} (a Stage II checkpoint "
                             f"written by another version?)")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])

    def __repr__(self):
        members = ", ".join(f"{name}={type(opt).__name__}({len(opt.param_groups)} groups)"
                            for name, opt in self.optimizers.items())
        return f"CompositeOptimizer({members})"


def _main_optimizer(cfg, param_groups):
    """fast-reid's optimizer choice (SOLVER.OPT, gradient clipping) over explicit parameter groups."""
    name = cfg.SOLVER.OPT
    if not hasattr(torch.optim, name):
        raise ValueError(f"SOLVER.OPT={name!r} is not a torch.optim optimizer")
    optimizer_class = maybe_add_gradient_clipping(cfg, getattr(torch.optim, name))
    if name == "SGD":
        return optimizer_class(param_groups, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    return optimizer_class(param_groups)


def build_stage2_optimizer(cfg, model):
    """SPEC §3's two optimisers as one :class:`CompositeOptimizer` (members ``main`` and ``decision``).

    Returns ``(optimizer, None)`` — fast-reid's ``build_optimizer`` contract (no ContiguousParams wrapper)."""
    model = unwrap_model(model)
    if not hasattr(model, "selector"):
        raise TypeError(f"Stage II needs the SPSModel meta-architecture, got {type(model).__name__}")
    decision_params = [p for p in model.selector.parameters() if p.requires_grad]
    decision_ids = {id(p) for p in decision_params}
    groups = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        heads_lr_factor=cfg.SOLVER.HEADS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    main_groups = [g for g in groups if not any(id(p) in decision_ids for p in g["params"])]
    # One group per tensor, like fast-reid's: its LRScheduler hook logs the LR of the largest group, which must stay
    # the backbone's (the most common LR among single-tensor groups), not the decision layer's.
    decision = torch.optim.SGD([{"params": [p]} for p in decision_params], lr=cfg.STAGE2.DECISION_LR,
                               momentum=cfg.STAGE2.DECISION_MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    optimizer = CompositeOptimizer(main=_main_optimizer(cfg, main_groups), decision=decision)
    logger.info("Stage II optimisers: %s on %d backbone/head tensors (base LR %g), SGD on the decision layer "
                "(LR %g, momentum %g)", cfg.SOLVER.OPT, len(main_groups), cfg.SOLVER.BASE_LR,
                cfg.STAGE2.DECISION_LR, cfg.STAGE2.DECISION_MOMENTUM)
    return optimizer, None


# ----------------------------------------------------------------------------- trainer
class Stage2Trainer(DPMPPTrainer):
    """fast-reid DefaultTrainer for Stage II: ``Stage2Trainer(cfg)``, ``resume_or_load(resume)``, ``train()`` -> the
    SPS checkpoint path (evaluation results, if any, in ``last_eval_results``)."""

    def __init__(self, cfg):
        self.sps_output_path = sps_checkpoint_path(cfg)
        cfg = stage2_config(cfg)
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # fast-reid writes config.yaml there while building
        super().__init__(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_stage2_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        """fast-reid's warm-up + SOLVER.SCHED on the backbone/head optimiser; the decision layer's LR is constant."""
        main = optimizer["main"] if isinstance(optimizer, CompositeOptimizer) else optimizer
        return build_lr_scheduler(cfg, main, iters_per_epoch)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        """Plain cosine evaluation of the SPS descriptor with fast-reid's own ReidEvaluator."""
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)

    def build_hooks(self):
        """fast-reid's hooks; without the EvalHook when TEST.EVAL_PERIOD <= 0 (fast-reid's divides by the period)."""
        ret = super().build_hooks()
        if self.cfg.TEST.EVAL_PERIOD <= 0:
            ret = [hook for hook in ret if not isinstance(hook, hooks.EvalHook)]
        return ret

    @property
    def last_eval_results(self):
        return getattr(self, "_last_eval_results", None)

    def train(self):
        """Train from ``start_epoch`` to SOLVER.MAX_EPOCH (evaluation optional), then write the SPS checkpoint."""
        TrainerBase.train(self, self.start_epoch, self.max_epoch, self.iters_per_epoch)
        return self.write_sps_checkpoint()

    def write_sps_checkpoint(self, path=None):
        """The Stage II -> III file (``sps_checkpoint.save_sps_checkpoint``) written atomically to
        OUTPUT_DIR/STAGE2.OUTPUT."""
        path = path or self.sps_output_path
        if comm.is_main_process():
            save_sps_checkpoint(path, unwrap_model(self.model), self.cfg, self.max_epoch)
        return path
