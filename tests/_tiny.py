"""What many tests share: the repository paths, the tiny random CLIP ViT's config options, and the helpers that run
a tool and read fast-reid's results table. Tests import this module (``from _tiny import ...``; pytest puts tests/ on
the path); no test module imports another.

Every option list is a list of strings, ready for a command line and equally for ``load_config`` (yacs reads "32" and
32 alike)."""
import importlib.util
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_CONFIGS = os.path.join(REPO, "configs", "Synthetic")


def tiny_vit(width=32, layers=2, heads=2, embed_dim=16, taps=(1, 2), hmg_gates=(1, 1), size=(64, 32), *extra):
    """Options of a tiny random-init CLIP ViT (no weights file): ``width`` D (also MODEL.BACKBONE.FEAT_DIM), ``layers``,
    ``heads``, ``embed_dim`` D_t, a 1-layer 16-wide text tower, HMG ``taps`` and ``hmg_gates`` (None: the config's),
    train and test ``size`` (None: the config's); ``extra`` options are appended."""
    options = ["MODEL.VIT.WEIGHTS", "", "MODEL.VIT.WIDTH", width, "MODEL.BACKBONE.FEAT_DIM", width,
               "MODEL.VIT.LAYERS", layers, "MODEL.VIT.HEADS", heads, "MODEL.VIT.EMBED_DIM", embed_dim,
               "MODEL.VIT.TEXT_WIDTH", 16, "MODEL.VIT.TEXT_LAYERS", 1, "MODEL.VIT.TEXT_HEADS", 2, "MODEL.VIT.TAPS", taps]
    if hmg_gates is not None:
        options += ["MODEL.DPMPP.HMG_GATES", hmg_gates]
    if size is not None:
        options += ["INPUT.SIZE_TRAIN", list(size), "INPUT.SIZE_TEST", list(size)]
    return [str(o) for o in options + list(extra)]


# A 2-epoch schedule of 2 iterations per epoch on the conftest ``data_root`` benchmark, evaluated at the end.
TINY_SCHEDULE = [str(o) for o in [
    "SOLVER.IMS_PER_BATCH", 16, "SOLVER.MAX_EPOCH", 2, "SOLVER.STEPS", "[1]", "SOLVER.WARMUP_ITERS", 0,
    "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 2, "TEST.IMS_PER_BATCH", 32, "STAGE1.MAX_EPOCH", 2,
    "STAGE1.WARMUP_EPOCHS", 1, "SEED", 0]]

# The tiny model and schedule of the end-to-end tool runs (train_net.py, run_pipeline.py, crash safety, ...).
TINY_MODEL = tiny_vit() + TINY_SCHEDULE

# The tiny DPM++ model that the inference tools (search, export, visualize) load from a saved state dict.
TINY_INFERENCE_MODEL = tiny_vit("32", "2", "2", "16", (1, 2), (1, 1), (64, 32),
                                "MODEL.HEADS.NUM_CLASSES", 8, "MODEL.VIT.NUM_CAMERAS", 8)

# Stage II / SPT runs: the configs' own image size and gates, small batches.
TINY_SPS = tiny_vit(32, 2, 2, 16, (1, 2), None, None, "SOLVER.IMS_PER_BATCH", 8, "DATALOADER.NUM_INSTANCE", 4,
                    "TEST.IMS_PER_BATCH", 16, "SOLVER.WARMUP_ITERS", 2)

TABLE_ROW = re.compile(r"^\| OccludedDuke\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)", re.M)


def run_tool(script, *args):
    """Run tools/<script> in a fresh interpreter from the repository root; asserts success, returns its output."""
    command = [sys.executable, os.path.join(REPO, "tools", script), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def metrics_row(log):
    """[Rank-1, Rank-5, Rank-10, mAP] of the last OccludedDuke row of fast-reid's results table in ``log``."""
    rows = TABLE_ROW.findall(log)
    assert rows, "fast-reid's evaluation table was not printed:\n" + log[-2000:]
    return [float(x) for x in rows[-1]]


def load_tool_module(name, module_name=None):
    """tools/<name>.py imported as a module (its main() is then called in-process)."""
    spec = importlib.util.spec_from_file_location(module_name or name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_project_train_net(project):
    """projects/<project>/train_net.py imported as a module; its evaluations use the Python ranking (no compile)."""
    path = os.path.join(REPO, "projects", project, "train_net.py")
    spec = importlib.util.spec_from_file_location(f"{project.lower()}_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_masked_evaluations(monkeypatch):
    """A list that gets one entry per MaskedReidEvaluator.evaluate call (the call itself still runs)."""
    from fastreid_dpmpp.evaluation import MaskedReidEvaluator
    calls, original = [], MaskedReidEvaluator.evaluate
    monkeypatch.setattr(MaskedReidEvaluator, "evaluate", lambda self: calls.append(1) or original(self))
    return calls


_SEARCH_TOOL = []


def run_search(capsys, *args):
    """tools/search.py's command line, in this process (an interpreter start per call costs more than the work)."""
    if not _SEARCH_TOOL:
        _SEARCH_TOOL.append(load_tool_module("search", "search_tool"))
    capsys.readouterr()
    _SEARCH_TOOL[0].main([str(a) for a in args])
    return capsys.readouterr().out
