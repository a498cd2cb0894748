"""Crash safety (issue 6.2): atomic checkpoint / tag writes, and a training process killed with SIGKILL mid-run that
resumes with --resume and ends with the same weights and metrics as an uninterrupted run (engine/resume.py)."""
import os
import signal
import subprocess
import sys

import pytest
import torch

import fastreid_dpmpp  # noqa: F401
from fastreid_dpmpp.checkpoint import atomic_torch_save, atomic_write_text

from _tiny import REPO, TINY_MODEL, metrics_row

# tools/train_net.py, except that the process SIGKILLs itself before the step DPMPP_KILL_AT_ITER (a deterministic
# point: checkpoint of epoch 0 written, epoch 1 half done).
KILLABLE_TRAIN_NET = """
import os, signal, sys
sys.argv[0] = 'train_net.py'
import fastreid_dpmpp
from fastreid_dpmpp.engine.defaults import launch_from_command_line, train_or_evaluate
from fastreid_dpmpp.engine.trainer import DPMPPTrainer
kill_at = int(os.environ.get('DPMPP_KILL_AT_ITER', '-1'))
run_step = DPMPPTrainer.run_step
def run_step_or_die(self):
    if self.iter == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    run_step(self)
DPMPPTrainer.run_step = run_step_or_die
launch_from_command_line(train_or_evaluate)
"""


def train(out, data_root, *extra, kill_at=None):
    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    command = [sys.executable, "-c", KILLABLE_TRAIN_NET, *extra, "--config-file", config, *map(str, TINY_MODEL),
               "SOLVER.MAX_EPOCH", "3", "SOLVER.STEPS", "[2]", "TEST.EVAL_PERIOD", "3", "DATASETS.ROOT", data_root,
               "OUTPUT_DIR", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               DPMPP_KILL_AT_ITER=str(-1 if kill_at is None else kill_at))
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def final_weights(out):
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(data_root, tmp_path):
    reference = train(tmp_path / "reference", data_root)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    killed = train(killed_dir, data_root, kill_at=3)  # 2 iterations per epoch: the 2nd step of epoch 1
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert (killed_dir / "last_checkpoint").read_text() == "model_0000.pth"
    assert not (killed_dir / "model_final.pth").exists()
    assert not [p.name for p in killed_dir.iterdir() if p.name.startswith(".tmp-")]  # no half-written file left

    resumed = train(killed_dir, data_root, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Starting training from epoch 1" in log  # restarted from the last checkpoint, not from scratch

    assert metrics_row(log) == metrics_row(reference.stdout + reference.stderr)
    expected, got = final_weights(tmp_path / "reference"), final_weights(killed_dir)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"


def test_without_epoch_reseeding_a_resumed_run_would_see_other_batches():
    """Why EpochSeedHook exists: fast-reid's identity sampler is one endless stream seeded at construction, so a
    fresh sampler (the resumed process) replays epoch 0's batches where the uninterrupted run draws epoch 1's."""
    from fastreid.data.samplers import NaiveIdentitySampler

    from fastreid_dpmpp.engine.resume import epoch_seed
    items = [(f"img{i}.jpg", i // 4, 0) for i in range(32)]
    batch = 16

    def first_batches(sampler, count):
        stream = iter(sampler)
        return [[next(stream) for _ in range(batch)] for _ in range(count)]

    uninterrupted = first_batches(NaiveIdentitySampler(items, batch, 4, seed=0), 4)
    resumed = first_batches(NaiveIdentitySampler(items, batch, 4, seed=0), 2)
    assert resumed != uninterrupted[2:]  # the stock behaviour: epoch 1 after a resume differs

    per_epoch = [first_batches(NaiveIdentitySampler(items, batch, 4, seed=epoch_seed(0, e)), 2) for e in (0, 1)]
    again = first_batches(NaiveIdentitySampler(items, batch, 4, seed=epoch_seed(0, 1)), 2)
    assert again == per_epoch[1] and per_epoch[0] != per_epoch[1]  # reseeded per epoch: a function of (SEED, epoch)


def test_epoch_seed_separates_seed_epoch_and_rank():
    from fastreid_dpmpp.engine.resume import epoch_seed
    seeds = {epoch_seed(s, e, r) for s in range(3) for e in range(3) for r in range(2)}
    assert len(seeds) == 18 and all(0 <= s < 2 ** 31 for s in seeds)
    assert epoch_seed(0, 1) != epoch_seed(1, 0) and epoch_seed(5, 2) == epoch_seed(5, 2)




def test_a_kill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL in the middle of torch.save: the previous checkpoint stays whole (temp file + rename)."""
    path = tmp_path / "model_0001.pth"
    atomic_torch_save({"weights": torch.ones(3)}, path)
    code = ("import os, signal, torch, sys; sys.path.insert(0, %r)\n"
            "from fastreid_dpmpp.checkpoint import atomic_torch_save\n"
            "class Bomb:\n"
            "    def __reduce__(self):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "atomic_torch_save({'weights': torch.zeros(100000), 'bomb': Bomb()}, %r)\n") % (REPO, str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))


def test_last_checkpoint_tag_is_written_atomically(tmp_path, monkeypatch):
    """fast-reid's Checkpointer.tag_last_checkpoint goes through atomic_write_text (compat fix): a failure while
    writing leaves the old tag, never an empty one."""
    from fastreid.utils.checkpoint import Checkpointer
    checkpointer = Checkpointer(torch.nn.Linear(2, 2), str(tmp_path))
    checkpointer.tag_last_checkpoint("model_0000.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"

    def fsync_fails(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.tag_last_checkpoint("model_0001.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint"]
    monkeypatch.undo()
    atomic_write_text("model_0002.pth", str(tmp_path / "last_checkpoint"))
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0002.pth")


def test_atomic_writes_leave_no_temporary_file_and_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_torch_save({"w": torch.ones(2)}, str(tmp_path / "model.pth"))
        atomic_write_text("model.pth", str(tmp_path / "last_checkpoint"))
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model.pth"]
    for name in ("model.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not mkstemp's 0600
