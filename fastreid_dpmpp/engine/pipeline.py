"""The three-stage DPM++ pipeline: I (prompt learning) -> II (SPS) -> III (SPT + DPM++), then evaluation.

Each stage runs as its own fast-reid training process (``tools/train_stage1.py``, ``tools/train_stage2.py``,
``tools/train_net.py``) in its own OUTPUT_DIR, so every stage keeps fast-reid's logging, checkpoints and
``--resume``. A stage whose artifact exists is skipped; an interrupted stage resumes from its last checkpoint.
The scripts are found in ``tools_dir`` (an argument; else ``fastreid_dpmpp.resources.tools_dir()``: the variable
FASTREID_DPMPP_TOOLS or the checkout the package runs from), so the pipeline also runs from a non-editable install.
The artifact of one stage is passed to the next through config keys:

    Stage I   -> <out>/stage1/<STAGE1.OUTPUT>     -> MODEL.DPMPP.TEXT_PROTOTYPES
    Stage II  -> <out>/stage2/<STAGE2.OUTPUT>     -> SPT.SPS_WEIGHTS (and SPT.ENABLED True)
    Stage III -> <out>/stage3/model_final.pth     -> evaluated with fast-reid's evaluator
"""
import collections
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..resources import tools_dir as find_tools_dir
from .defaults import load_config
from .progress import EpochProgress

logger = logging.getLogger("fastreid.dpmpp.pipeline")

_PROGRESS = re.compile(r"eta: (\S+)\s+epoch/iter: (\d+)/(\d+)\s+total_loss: (\S+)")
_TAIL_LINES = 40


@dataclass
class Stage:
    name: str
    script: str
    config_file: str
    output_dir: str
    artifact: str
    opts: list = field(default_factory=list)
    epochs: int = None      # for the progress line; None = read from the config (STAGE1 / SOLVER.MAX_EPOCH)
    tools_dir: str = None   # where ``script`` is (unless absolute); None = fastreid_dpmpp.resources.tools_dir()

    @property
    def artifact_path(self):
        return os.path.join(self.output_dir, self.artifact)

    def done(self):
        return os.path.isfile(self.artifact_path)

    @property
    def script_path(self):
        return self.script if os.path.isabs(self.script) else os.path.join(find_tools_dir(self.tools_dir), self.script)


def stage2_config_path(config_file, cfg):
    """Stage II's config: PIPELINE.STAGE2_CONFIG, relative to the DPM++ config's folder."""
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), cfg.PIPELINE.STAGE2_CONFIG)


def plan_stages(config_file, output_dir, opts=(), tools_dir=None):
    """The three stages with their configs, output folders, artifacts and hand-over keys (scripts in ``tools_dir``,
    see the module docstring)."""
    cfg = load_config(config_file, opts)
    stage1_dir, stage2_dir, stage3_dir = (os.path.join(output_dir, s) for s in ("stage1", "stage2", "stage3"))
    stage1 = Stage("I: prompt learning", "train_stage1.py", config_file, stage1_dir, cfg.STAGE1.OUTPUT, list(opts),
                   tools_dir=tools_dir)
    stage2_file = stage2_config_path(config_file, cfg)
    stage2_cfg = load_config(stage2_file, opts)
    stage2 = Stage("II: salient patch selection", "train_stage2.py", stage2_file, stage2_dir, stage2_cfg.STAGE2.OUTPUT,
                   list(opts), tools_dir=tools_dir)
    stage3 = Stage("III: SPT + DPM++", "train_net.py", config_file, stage3_dir, "model_final.pth",
                   list(opts) + ["MODEL.DPMPP.TEXT_PROTOTYPES", stage1.artifact_path,
                                 "SPT.ENABLED", "True", "SPT.SPS_WEIGHTS", stage2.artifact_path],
                   tools_dir=tools_dir)
    return [stage1, stage2, stage3]


def stage_epochs(stage):
    """Number of epochs the stage trains (its config, with the stage's options)."""
    if stage.epochs:
        return int(stage.epochs)
    cfg = load_config(stage.config_file, stage.opts)
    return int(cfg.STAGE1.MAX_EPOCH if stage.script == "train_stage1.py" else cfg.SOLVER.MAX_EPOCH)


def run_stage(stage, log_file, show_progress=True, stream=None):
    """Run one stage as a child process; its full log goes to ``log_file``, its progress to ``stream`` (default
    stdout): a bar redrawn in place on a terminal, one line per epoch (loss, ETA) otherwise (``EpochProgress``).
    A failed stage raises RuntimeError with the last lines of its output (the error, and where the weights are)."""
    os.makedirs(stage.output_dir, exist_ok=True)
    command = [sys.executable, stage.script_path, "--config-file", stage.config_file, "--resume",
               *map(str, stage.opts), "OUTPUT_DIR", stage.output_dir]
    start = time.time()
    progress = EpochProgress(f"[{stage.name}]", stage_epochs(stage), stream) if show_progress else None
    tail = collections.deque(maxlen=_TAIL_LINES)
    with open(log_file, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for line in process.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            match = _PROGRESS.search(line)
            if match and progress is not None:
                eta, epoch, _, loss = match.groups()
                progress.report(int(epoch) + 1, loss, eta)   # fast-reid logs the 0-based epoch at its end
        process.wait()
    if progress is not None:
        progress.finish(f"finished in {time.time() - start:.0f} s" if process.returncode == 0 else
                        f"failed after {time.time() - start:.0f} s")
    if process.returncode != 0:
        raise RuntimeError(f"Stage {stage.name} failed (exit {process.returncode}); full log: {log_file}. Its last "
                           f"lines:\n" + "\n".join(f"    {line}" for line in _error_lines(tail)))
    if not stage.done():
        raise RuntimeError(f"Stage {stage.name} finished but did not write {stage.artifact_path}; see {log_file}")
    return time.time() - start


def _error_lines(tail, count=10):
    """The last lines a failed stage wrote: the exception, and the notes saying where its weights are."""
    return [line for line in tail if line.strip()][-count:]


def run_pipeline(config_file, output_dir, opts=(), show_progress=True, tools_dir=None):
    """Run I -> II -> III, skipping stages whose artifact exists. Returns {stage name: seconds (0 if skipped)}."""
    os.makedirs(output_dir, exist_ok=True)
    log_file = os.path.join(output_dir, "pipeline.log")
    timings = {}
    for stage in plan_stages(config_file, output_dir, opts, tools_dir=tools_dir):
        if stage.done():
            print(f"  [{stage.name}] artifact exists, skipped: {stage.artifact_path}", flush=True)
            timings[stage.name] = 0.0
            continue
        timings[stage.name] = run_stage(stage, log_file, show_progress)
    return timings


def evaluate_checkpoint(config_file, weights, opts=(), output_dir=None):
    """fast-reid's evaluation of a trained model; returns {dataset: {metric: value}}."""
    import fastreid_dpmpp  # noqa: F401
    from fastreid.utils.checkpoint import Checkpointer

    from ..data.root import apply_dataset_root
    from .trainer import DPMPPTrainer, with_camera_count

    cfg = load_config(config_file, list(opts) + ["MODEL.WEIGHTS", weights] +
                      (["OUTPUT_DIR", output_dir] if output_dir else []))
    cfg.freeze()
    apply_dataset_root(cfg)
    cfg = with_camera_count(cfg)
    model = DPMPPTrainer.build_model(cfg)
    Checkpointer(model).load(weights)
    results = DPMPPTrainer.test(cfg, model)
    if len(cfg.DATASETS.TESTS) == 1:
        results = {cfg.DATASETS.TESTS[0]: results}
    return results
