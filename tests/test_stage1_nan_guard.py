"""Stage I NaN guard (issue 6): a loss that becomes NaN stops prompt learning with NonFiniteLossError, keeps the last
good checkpoint and writes no text-prototype file; T is never written from non-finite prompt weights."""
import hashlib
import os

import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.nan_guard import NonFiniteGuard, NonFiniteLossError, NonFiniteWeightsError
from fastreid_dpmpp.engine.stage1 import Stage1Trainer, text_prototypes_path

from _tiny import REPO, TINY_MODEL

CONFIG = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")


def _stage1_trainer(data_root, output_dir, *opts):
    """Stage I on the 32 training images of ``data_root`` in batches of 16: 2 iterations per epoch, checkpoint
    after every epoch."""
    cfg = load_config(CONFIG, [str(v) for v in [*TINY_MODEL, "DATASETS.ROOT", data_root, "OUTPUT_DIR", output_dir,
                                                 "STAGE1.IMS_PER_BATCH", 16, "SOLVER.CHECKPOINT_PERIOD", 1, *opts]])
    cfg.freeze()
    trainer = Stage1Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exploded(data_root, tmp_path_factory):
    """A real divergence, no mock: epoch 0 warms up at 1e30 x 1e-33 = 1e-3, epoch 1 runs at ~5e29; its first Adam
    step moves the prompt context by ~5e29 and the next forward pass (iteration 3) gives a NaN loss."""
    output_dir = tmp_path_factory.mktemp("stage1_nan")
    trainer = _stage1_trainer(str(data_root), str(output_dir), "STAGE1.MAX_EPOCH", 2, "STAGE1.WARMUP_EPOCHS", 1,
                              "STAGE1.BASE_LR", 1e30, "STAGE1.WARMUP_FACTOR", 1e-33)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    return trainer, output_dir, str(error.value)


def test_a_nan_loss_stops_stage1_naming_terms_iteration_and_the_kept_checkpoint(exploded):
    trainer, _, message = exploded
    assert sum(isinstance(h, NonFiniteGuard) for h in trainer._hooks) == 1
    assert "loss term(s) loss_i2t=nan, loss_t2i=nan became non-finite at iteration 3 (epoch 1)" in message
    assert "This step was not applied to the weights" in message
    assert "Last checkpoint kept: model_0000.pth" in message and "STAGE1.BASE_LR" in message


def test_the_last_good_checkpoint_is_kept_and_no_text_prototypes_are_written(exploded):
    trainer, output_dir, _ = exploded
    stage1 = output_dir / "stage1"
    assert sorted(p.name for p in stage1.glob("*.pth")) == ["image_features.pth", "model_0000.pth"]  # no final
    assert (stage1 / "last_checkpoint").read_text().strip() == "model_0000.pth"
    kept = torch.load(stage1 / "model_0000.pth", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert not os.path.exists(text_prototypes_path(trainer.cfg))
    assert not [p for p in output_dir.rglob("*") if p.name.startswith("text_prototypes")]  # no temporary file left


def test_text_prototypes_are_never_written_from_non_finite_prompt_weights(exploded):
    trainer, output_dir, _ = exploded
    ctx = trainer.model.prompt_learner.ctx
    with torch.no_grad():
        ctx.copy_(torch.randn_like(ctx))  # finite context: T can be written
        ctx[[1, 6]] = float("nan")        # identities 1 and 6 poisoned
    target = output_dir / "T_check.pth"
    with pytest.raises(NonFiniteWeightsError) as error:
        trainer.write_text_prototypes(str(target))
    assert not target.exists() and str(target) in str(error.value)
    assert f"2 of {len(trainer.identities)} identities" in str(error.value)
    assert f"{trainer.identities[1]}, {trainer.identities[6]}" in str(error.value)


def test_a_run_whose_last_step_diverges_writes_no_text_prototypes(data_root, tmp_path):
    """1 iteration per epoch: the ~5e29 step is the run's last, so no NaN loss follows and the context is finite
    (the checkpoints are written), but the text features computed from it are NaN: T is refused."""
    trainer = _stage1_trainer(str(data_root), str(tmp_path), "STAGE1.IMS_PER_BATCH", 32, "STAGE1.MAX_EPOCH", 2,
                              "STAGE1.WARMUP_EPOCHS", 1, "STAGE1.BASE_LR", 1e30, "STAGE1.WARMUP_FACTOR", 1e-33)
    with pytest.raises(NonFiniteWeightsError) as error:
        trainer.train()
    assert torch.isfinite(trainer.model.prompt_learner.ctx).all()
    assert (tmp_path / "stage1" / "model_final.pth").is_file()
    path = text_prototypes_path(trainer.cfg)
    assert f"{path} was not written" in str(error.value) and "STAGE1.BASE_LR" in str(error.value)
    assert not os.path.exists(path) and not list(tmp_path.glob("text_prototypes*"))


def test_resuming_the_diverged_run_evaluates_T_from_the_kept_checkpoint(exploded):
    """--eval-only / resume_or_load(True) after the stop loads model_0000.pth, whose finite context gives a finite T;
    the kept checkpoint is left byte for byte."""
    trainer, output_dir, _ = exploded
    checkpoint = output_dir / "stage1" / "model_0000.pth"
    digest = _digest(checkpoint)
    trainer.resume_or_load(resume=True)
    assert trainer.start_epoch == 1
    path = trainer.write_text_prototypes(str(output_dir / "T_resumed.pth"))
    saved = torch.load(path, weights_only=True)["prototypes"]
    assert torch.isfinite(saved).all() and saved.shape == (len(trainer.identities), 16)
    assert _digest(checkpoint) == digest
