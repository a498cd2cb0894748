"""fast-reid's DefaultTrainer with the few DPM++ additions; everything else is fast-reid's own."""
import contextlib
import logging
import time

import torch
from fastreid.data.build import _test_loader_from_config, build_reid_test_loader
from fastreid.engine import DefaultTrainer
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.evaluation import ReidEvaluator
from fastreid.solver.build import get_default_optimizer_params
from fastreid.utils import comm
from fastreid.utils.params import ContiguousParams

from ..data.cameras import test_camera_rows, training_cameras, with_camera_count  # noqa: F401  (with_camera_count: API)
from ..data.root import apply_dataset_root
from ..evaluation.breakdown import with_breakdowns
from ..evaluation.masked_evaluator import MaskedReidEvaluator
from ..evaluation.rerank import RerankReidEvaluator, uses_rerank_evaluator
from ..model_outputs import emits_query_masks, has_mask_generator
from ..modeling.module_utils import unwrap_model
from ..text_prototypes import load_text_prototypes
from .eval_results import EVAL_RESULTS_FILE, write_eval_results  # noqa: F401  (EVAL_RESULTS_FILE: API)
from .final_checkpoint import with_safe_evaluation
from .nan_guard import with_non_finite_guard
from .resume import EpochSeedHook

logger = logging.getLogger("fastreid.dpmpp.trainer")


def count_training_cameras(cfg):
    """Number of distinct cameras over the training datasets (rows of the SIE table)."""
    return len(training_cameras(cfg))


def mask_generator_parameters(model):
    """Parameters of the DPM head's mask generator (HMG), [] when the model has none."""
    generator = getattr(getattr(unwrap_model(model), "heads", None), "mask_generator", None)
    return [] if generator is None else list(generator.parameters())


@contextlib.contextmanager
def only_these_require_grad(model, parameters):
    """Temporarily train ``parameters`` alone: autograd then builds no graph through the other weights."""
    chosen = {id(p) for p in parameters}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, flag in flags:
            p.requires_grad_(flag and id(p) in chosen)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def layer_decay_scales(model, decay):
    """{id(parameter): decay^(depth + 1 − layer)} for the backbone's parameters (``ReIDViT.layer_id``)."""
    backbone = unwrap_model(model).backbone
    top = backbone.depth + 1
    return {id(p): decay ** (top - backbone.layer_id(name)) for name, p in backbone.named_parameters()}


@contextlib.contextmanager
def layer_decayed_lrs(model, decay):
    """Within the block, fast-reid's parameter groups get their LR scaled by ``layer_decay_scales`` (layer-wise LR
    decay, SOLVER.LAYER_DECAY); decay 1.0 (or a backbone without layers) changes nothing."""
    from fastreid.solver import build as solver_build
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY must be in (0, 1] (1.0 = off), got {decay}")
    if decay == 1.0 or not hasattr(unwrap_model(model).backbone, "layer_id"):
        yield
        return
    scales, original = layer_decay_scales(model, decay), solver_build.get_default_optimizer_params

    def decayed(*args, **kwargs):
        groups = original(*args, **kwargs)
        for group in groups:
            group["lr"] = group["lr"] * scales.get(id(group["params"][0]), 1.0)
        return groups

    solver_build.get_default_optimizer_params = decayed
    try:
        yield
    finally:
        solver_build.get_default_optimizer_params = original


def check_alternate_update(cfg):
    """MODEL.DPMPP.ALTERNATE_UPDATE needs a DPMPP model with a mask generator and fp32 training."""
    if cfg.MODEL.META_ARCHITECTURE != "DPMPP" or not has_mask_generator(cfg):
        raise ValueError("MODEL.DPMPP.ALTERNATE_UPDATE alternates the mask generator's optimiser with the rest: it "
                         "needs META_ARCHITECTURE DPMPP with a mask generator (MODEL.DPMPP.DPM_ENABLED True, "
                         f"MASKED_PROTOTYPE visual/text); got {cfg.MODEL.META_ARCHITECTURE}, DPM_ENABLED "
                         f"{cfg.MODEL.DPMPP.DPM_ENABLED}, MASKED_PROTOTYPE {cfg.MODEL.DPMPP.MASKED_PROTOTYPE}")
    if cfg.SOLVER.AMP.ENABLED:
        raise ValueError("MODEL.DPMPP.ALTERNATE_UPDATE is implemented for fp32 training only: "
                         "set SOLVER.AMP.ENABLED False")


def build_mask_optimizer(cfg, model):
    """DPM's second optimiser: the mask generator alone, at the heads' LR (BASE_LR x HEADS_LR_FACTOR, biases
    x BIAS_LR_FACTOR), with SOLVER.OPT. Like DPM, it is not attached to the LR schedule (constant LR)."""
    generator = unwrap_model(model).heads.mask_generator
    groups = get_default_optimizer_params(
        generator, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    for group in groups:
        group["lr"] *= cfg.SOLVER.HEADS_LR_FACTOR
    extra = dict(momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV) if cfg.SOLVER.OPT == "SGD" else {}
    return getattr(torch.optim, cfg.SOLVER.OPT)(groups, **extra)


class AlternatingMaskTrainer(SimpleTrainer):
    """DPM's two-optimiser alternating update (SPEC §5; MODEL.DPMPP.ALTERNATE_UPDATE), on one mini-batch:

    1. forward, full loss, backward, step the main optimiser (everything but the mask generator);
    2. forward again with the updated weights and the same random state (same SPT partners, drop-path),
       full loss, backward through the mask generator only, step the mask optimiser.
    Costs about two training steps. The logged losses are those of pass 1.
    """

    @classmethod
    def from_simple_trainer(cls, trainer, mask_optimizer):
        """Take over a built SimpleTrainer's model, optimiser and data iterator (no second iterator)."""
        alternating = cls.__new__(cls)
        alternating.__dict__.update(trainer.__dict__)
        alternating.mask_optimizer = mask_optimizer
        alternating.mask_parameters = [p for group in mask_optimizer.param_groups for p in group["params"]]
        return alternating

    def run_step(self):
        assert self.model.training, "[AlternatingMaskTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        synthesizer = getattr(unwrap_model(self.model), "spt", None)
        spt_rng = synthesizer.rng_state() if synthesizer is not None else None
        loss_dict = self.model(data)
        self.optimizer.zero_grad()
        sum(loss_dict.values()).backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
        if isinstance(self.param_wrapper, ContiguousParams):
            self.param_wrapper.assert_buffer_is_valid()

        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if spt_rng is not None:   # the SPT pairing has its own generator: replay it too (same partners)
            synthesizer.set_rng_state(spt_rng)
        with only_these_require_grad(self.model, self.mask_parameters):
            mask_losses = sum(self.model(data).values())
            self.mask_optimizer.zero_grad()
            mask_losses.backward()
        self.mask_optimizer.step()


class DPMPPTrainer(DefaultTrainer):
    def __init__(self, cfg):
        if cfg.MODEL.DPMPP.ALTERNATE_UPDATE:
            check_alternate_update(cfg)
        super().__init__(with_camera_count(cfg))
        if self.cfg.MODEL.DPMPP.ALTERNATE_UPDATE:
            self._use_alternate_update()

    def _use_alternate_update(self):
        old = self._trainer
        mask_optimizer = build_mask_optimizer(self.cfg, old.model)
        self._trainer = AlternatingMaskTrainer.from_simple_trainer(old, mask_optimizer)
        self.checkpointer.checkpointables["mask_optimizer"] = mask_optimizer
        logger.info("DPM alternating update: %d mask-generator tensors in their own optimiser",
                    len(self._trainer.mask_parameters))

    def build_hooks(self):
        """fast-reid's hooks, plus SPT (SPEC §4) when SPT.ENABLED: the hook loads the frozen SPS model, attaches the
        synthesiser and logs its statistics; it runs before fast-reid's PeriodicWriter so they are written."""
        ret = super().build_hooks()
        if self.cfg.SPT.ENABLED:
            from fastreid.engine.hooks import PeriodicWriter

            from .stage3_spt_hook import SPTHook
            writers = [i for i, hook in enumerate(ret) if isinstance(hook, PeriodicWriter)]
            ret.insert(writers[0] if writers else len(ret), SPTHook(self.cfg))
        if self.cfg.SEED >= 0:
            # first, so that every epoch starts from (SEED, epoch): --resume then continues exactly (engine/resume.py)
            ret.insert(0, EpochSeedHook(self.cfg.SEED, deterministic_cpu=str(self.cfg.MODEL.DEVICE) == "cpu"))
        # a NaN / inf loss stops with the terms named; weights are checked before they are evaluated or saved;
        # model_final.pth is written before the final evaluation, whose errors name it and the --eval-only command
        return with_safe_evaluation(with_non_finite_guard(ret), self)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """fast-reid's optimiser, with the backbone's LRs decayed by depth when SOLVER.LAYER_DECAY < 1; with
        MODEL.DPMPP.ALTERNATE_UPDATE it leaves out the mask generator, which gets its own optimiser
        (``build_mask_optimizer``)."""
        with layer_decayed_lrs(model, float(cfg.SOLVER.LAYER_DECAY)):
            if not cfg.MODEL.DPMPP.ALTERNATE_UPDATE:
                return super().build_optimizer(cfg, model)
            excluded = {id(p) for p in mask_generator_parameters(model)}
            with only_these_require_grad(model, [p for p in model.parameters() if id(p) not in excluded]):
                return super().build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        """Masked matching (SPEC §6) for models that return cat([descriptor, mask]) (see
        ``emits_query_masks``); fast-reid's stock ReidEvaluator, unchanged, otherwise — or its RerankReidEvaluator
        subclass when TEST.RERANK asks for the "kreciprocal" method or a BLOCK_SIZE."""
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        if emits_query_masks(cfg):
            evaluator = MaskedReidEvaluator
        else:
            evaluator = RerankReidEvaluator if uses_rerank_evaluator(cfg) else ReidEvaluator
        # + own-camera top-1 share and, on the synthetic benchmark, per occluder / coverage (evaluation/breakdown.py)
        return data_loader, with_breakdowns(evaluator)(dataset_name, cfg, num_query, output_dir or cfg.OUTPUT_DIR)

    @classmethod
    def test(cls, cfg, model):
        """fast-reid's evaluation; the results are also written to OUTPUT_DIR/eval_results.json (fast-reid's
        metrics.json drops the final evaluation: its JSONWriter skips scalars of an iteration already written)."""
        results = super().test(cfg, model)
        if comm.is_main_process() and cfg.OUTPUT_DIR and results:
            per_dataset = results if len(cfg.DATASETS.TESTS) > 1 else {cfg.DATASETS.TESTS[0]: results}
            write_eval_results(cfg.OUTPUT_DIR, per_dataset)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        apply_dataset_root(cfg)
        loader = super().build_train_loader(cfg)
        if cfg.MODEL.DPMPP.TEXT_PROTOTYPES:
            # Stage I's T must list the same identities, in the same label order, as this training set.
            load_text_prototypes(cfg.MODEL.DPMPP.TEXT_PROTOTYPES, expected_identities=loader.dataset.pids)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # fast-reid's test loader always uses 4 workers; honour DATALOADER.NUM_WORKERS (2-core machines).
        # Camera ids become SIE rows; cameras training never saw get distinct ids >= NUM_CAMERAS (data/cameras.py).
        apply_dataset_root(cfg)
        args = _test_loader_from_config(cfg, dataset_name=dataset_name)
        args["test_set"].img_items, _ = test_camera_rows(cfg, dataset_name, args["test_set"].img_items)
        return build_reid_test_loader(**args, num_workers=cfg.DATALOADER.NUM_WORKERS)
