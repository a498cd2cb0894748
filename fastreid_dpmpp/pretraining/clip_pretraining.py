"""Contrastive pretraining of the tiny CLIP with open_clip's own trainer (``open_clip_train``), on the CPU.

``pretrain(recipe, corpus_root, output_dir)`` runs ``open_clip_train`` in a child process
(``fastreid_dpmpp.pretraining.open_clip_entry``, which registers the plugin's model configs) on the corpus's
caption CSVs, shows one progress line per epoch with an ETA (a bar on a terminal), keeps open_clip's full log
in ``<output_dir>/<name>/out.log`` and resumes from the newest epoch checkpoint when re-run.
``export_weights`` turns an open_clip training checkpoint (weights + optimizer state) into the plain state
dict that ``MODEL.VIT.WEIGHTS`` (or ``open_clip.create_model(..., pretrained=path)``) loads.
"""
import dataclasses
import glob
import hashlib
import logging
import os
import re
import subprocess
import sys
import time

import torch

from ..checkpoint import atomic_torch_save, trusted_torch_load
from ..engine.progress import EpochProgress
from ..modeling.backbones.open_clip_configs import TINY_CLIP
from .corpus import caption_csv_paths

__all__ = ["PretrainRecipe", "open_clip_train_argv", "pretrain", "epoch_checkpoints", "export_weights", "sha256_of"]

logger = logging.getLogger("fastreid.dpmpp.pretraining")

_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?Contrastive_loss: (\S+) \((\S+)\)")


@dataclasses.dataclass
class PretrainRecipe:
    """Everything that decides a pretraining run (recorded next to the exported weights)."""
    model: str = TINY_CLIP
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    wd: float = 0.1
    warmup: int = 100                 # steps
    seed: int = 0
    name_occluder: bool = True        # captions name what hides the person
    crop_scale: tuple = (0.8, 1.0)    # timm RandomResizedCrop, on the 1:2 pedestrian box
    crop_ratio: tuple = (0.4, 0.6)    # width / height of the crop (open_clip's default crop ignores it)
    workers: int = 1
    threads: int = 0                  # torch threads of the child (0: torch's default)
    save_frequency: int = 5

    def run_name(self):
        return f"{self.model}_{'named' if self.name_occluder else 'plain'}_s{self.seed}"


def open_clip_train_argv(recipe, train_csv, val_csv, logs_dir):
    """The ``open_clip_train`` command line of ``recipe`` (CPU, fp32, CSV data, resume from the latest)."""
    return [
        "--model", recipe.model, "--train-data", train_csv, "--val-data", val_csv, "--dataset-type", "csv",
        "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--batch-size", str(recipe.batch_size), "--epochs", str(recipe.epochs), "--lr", str(recipe.lr),
        "--wd", str(recipe.wd), "--warmup", str(recipe.warmup), "--seed", str(recipe.seed),
        "--workers", str(recipe.workers), "--device", "cpu", "--precision", "fp32",
        "--aug-cfg", "use_timm=True", f"scale={tuple(recipe.crop_scale)}", f"ratio={tuple(recipe.crop_ratio)}",
        "--save-frequency", str(recipe.save_frequency), "--save-most-recent", "--val-frequency", "1",
        "--zeroshot-frequency", "0", "--report-to", "", "--log-every-n-steps", "10",
        "--logs", logs_dir, "--name", recipe.run_name(), "--resume", "latest",
    ]


def _child_env(recipe):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if recipe.threads:
        env.update(OMP_NUM_THREADS=str(recipe.threads), MKL_NUM_THREADS=str(recipe.threads))
    return env


def _report(progress, match, recipe, start, start_fraction):
    epoch, done, total, _, _, avg_loss = match.groups()
    fraction = (int(epoch) + int(done) / max(int(total), 1)) / recipe.epochs
    elapsed, run = time.time() - start, fraction - start_fraction
    eta = elapsed * (1.0 - fraction) / run if run > 1e-6 else None
    progress.report(int(epoch) + 1, float(avg_loss), eta)
    return fraction


def pretrain(recipe, corpus_root, output_dir, show_progress=True):
    """Run (or resume) one pretraining run; returns the path of its final training checkpoint."""
    train_csv, val_csv = caption_csv_paths(corpus_root, recipe.name_occluder)
    for path in (train_csv, val_csv):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"caption CSV '{path}' not found: write the corpus and its captions first "
                                    "(tools/pretrain_clip.py does both)")
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, recipe.run_name(), "checkpoints", f"epoch_{recipe.epochs}.pt")
    if os.path.isfile(final):
        logger.info("pretraining already finished: %s", final)
        return final
    command = [sys.executable, "-m", "fastreid_dpmpp.pretraining.open_clip_entry",
               *open_clip_train_argv(recipe, train_csv, val_csv, output_dir)]
    log_path = os.path.join(output_dir, f"{recipe.run_name()}.console.log")
    progress = EpochProgress(f"[pretrain {recipe.run_name()}]", recipe.epochs) if show_progress else None
    start, start_fraction = time.time(), None
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=_child_env(recipe))
        for line in process.stdout:
            log.write(line)
            match = _TRAIN_LINE.search(line)
            if match and progress is not None:
                fraction = _report(progress, match, recipe, start, start_fraction or 0.0)
                start_fraction = fraction if start_fraction is None else start_fraction
        process.wait()
    if progress is not None:
        progress.finish()
    if process.returncode != 0 or not os.path.isfile(final):
        raise RuntimeError(f"open_clip_train failed (exit {process.returncode}) or wrote no {final}; "
                           f"see {log_path}")
    return final


def epoch_checkpoints(output_dir, recipe):
    """{epoch: path} of the run's saved epoch checkpoints."""
    pattern = os.path.join(output_dir, recipe.run_name(), "checkpoints", "epoch_*.pt")
    found = {}
    for path in glob.glob(pattern):
        match = re.search(r"epoch_(\d+)\.pt$", path)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def export_weights(checkpoint_path, out_path):
    """Write the model weights of an open_clip training checkpoint as a plain fp32 state dict (no optimizer)
    to ``out_path`` (atomically); returns its sha256."""
    checkpoint = trusted_torch_load(checkpoint_path, what="open_clip training checkpoint")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"'{checkpoint_path}' holds no open_clip state_dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v.detach().float().contiguous()
             for k, v in state.items()}
    atomic_torch_save(state, out_path)
    return sha256_of(out_path)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
