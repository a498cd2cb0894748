"""Comparisons under the evaluation protocol (docs/EVALUATION.md): arms × seeds, trained on one training protocol
of the frozen synthetic benchmark, every run evaluated by ``tools/evaluate_protocol.py`` on the same splits, and
reported with mean ± std over seeds, paired per-seed deltas against a reference arm, bootstrap intervals over
queries, and the random-ranking level.

Output folder::

    stages/seed<k>/stage1|stage2       Stage I (text prototypes) / Stage II (SPS) of seed k, shared by the arms
    <arm>/seed<k>/                     one training run (fast-reid OUTPUT_DIR) + protocol.json + result.json

An arm is a config file plus KEY VALUE overrides; ``needs`` says which hand-overs it takes ("text": Stage I's
T -> MODEL.DPMPP.TEXT_PROTOTYPES; "sps": Stage II's SPS -> SPT.SPS_WEIGHTS). Stages and runs share the ``jobs``
workers: a run waits only for the stages it needs, and runs that need none train while the stages run. Finished
runs are reused, an interrupted one resumes; a failed one is logged and the others go on.
"""
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import yaml

from ..checkpoint import atomic_write_text
from ..data.benchmark import benchmark_id, ensure_benchmark
from ..evaluation.protocol import bootstrap_interval, seed_mean_std
from ..resources import tools_dir
from .ablation import _run_parallel
from .pipeline import Stage, plan_stages, run_stage
from .protocol_eval import ORACLE_KEEP_FRACTIONS

__all__ = ["Arm", "Setting", "load_spec", "settings_of", "run_experiment", "arm_values", "comparison_rows",
           "comparison_markdown"]

logger = logging.getLogger("fastreid.dpmpp.experiment")



@dataclass(frozen=True)
class Arm:
    name: str
    config: str
    opts: tuple = ()
    needs: tuple = ()          # subset of ("text", "sps")
    weights_of: str = ""       # evaluate another arm's trained model (no training), e.g. with ``interpolate``
    interpolate: float = 1.0   # WiSE-FT weight of the fine-tuned backbone (1.0 = the fine-tuned model itself)
    sps_opts: tuple = ()       # options of Stage II only; arms with the same sps_opts share one Stage II per seed

    def run_dir(self, root, seed):
        return os.path.join(root, self.name, f"seed{seed}")

    def trained_dir(self, root, seed):
        return os.path.join(root, self.weights_of or self.name, f"seed{seed}")


@dataclass(frozen=True)
class Setting:
    """Which numbers of protocol.json a table reads: SIE at test, descriptor space, matching."""
    sie: str = "sie_off"
    space: str = "concat"
    matching: str = "plain"    # "plain" | "masked" (falls back to plain for arms without masks)

    def describe(self):
        return f"SIE {self.sie[4:]} at test, descriptor {self.space}, {self.matching} matching"


@dataclass
class Experiment:
    arms: list
    seeds: list
    training: str
    root: str
    benchmark_dir: str
    stage_config: str                       # the DPM++ config whose Stage I / II (PIPELINE.STAGE2_CONFIG) arms share
    opts: list = field(default_factory=list)
    splits: tuple = ("val", "test1", "test2")
    jobs: int = 1
    tools_dir: str = None                   # tools/ (evaluate_protocol.py, train_*.py); None: resources.tools_dir()
    eval_spaces: tuple = ()                 # descriptor spaces to evaluate; () = every space the model has
    eval_sie: tuple = ("off", "on")         # SIE at test settings to evaluate


_ARM_KEYS = {"name", "config", "opts", "needs", "weights_of", "interpolate", "sps_opts"}


def load_spec(path):
    """(spec dict, [Arm], stage config path) of an experiment spec (YAML; paths relative to its folder)."""
    with open(path) as f:
        spec = yaml.safe_load(f)
    folder = os.path.dirname(os.path.abspath(path))
    missing = [k for k in ("training", "seeds", "arms", "stage_config") if k not in spec]
    if missing:
        raise ValueError(f"{path}: the experiment spec lacks {missing}")
    for a in spec["arms"]:
        unknown = sorted(set(a) - _ARM_KEYS)
        if unknown:
            raise ValueError(f"{path}: arm {a.get('name')!r}: unknown key(s) {unknown}; expected some of "
                             f"{sorted(_ARM_KEYS)}")
    configs = {a["name"]: a.get("config") for a in spec["arms"]}
    arms = [Arm(a["name"], os.path.normpath(os.path.join(folder, a.get("config") or configs[a["weights_of"]])),
                tuple(str(o) for o in a.get("opts", [])), tuple(a.get("needs", [])), a.get("weights_of", ""),
                float(a.get("interpolate", 1.0)), tuple(str(o) for o in a.get("sps_opts", [])))
            for a in spec["arms"]]
    for arm in arms:
        if not os.path.isfile(arm.config):
            raise FileNotFoundError(f"{path}: arm {arm.name!r}: config file {arm.config} does not exist")
    return spec, arms, os.path.normpath(os.path.join(folder, spec["stage_config"]))


def settings_of(spec):
    """The spec's table settings, the headline first."""
    return [Setting(**s) for s in spec.get("settings", [spec.get("setting", {})])]


def _stage_dirs(exp, seed, train_root, sps_opts=()):
    """[Stage I, Stage II] of one seed; with ``sps_opts`` a Stage II of its own, in stages/seed<k>/<sps label>."""
    opts = list(exp.opts) + ["DATASETS.ROOT", train_root, "SEED", seed]
    seed_dir = os.path.join(exp.root, "stages", f"seed{seed}")
    stages = plan_stages(exp.stage_config, seed_dir, opts, tools_dir=exp.tools_dir)[:2]
    if sps_opts:
        stages[1] = plan_stages(exp.stage_config, os.path.join(seed_dir, _sps_label(sps_opts)),
                                opts + list(sps_opts), tools_dir=exp.tools_dir)[1]
    return stages


def _sps_label(sps_opts):
    pairs = zip(sps_opts[::2], sps_opts[1::2])
    return "sps_" + "_".join(f"{key}={value}" for key, value in pairs).replace(os.sep, "-")


def _sps_key(sps_opts):
    return " ".join(("sps",) + tuple(sps_opts))


def _gate_keys(arm):
    """The stage gates an arm waits for: "text" (Stage I) and its Stage II, "sps" or "sps <its sps_opts>"."""
    return (["text"] if "text" in arm.needs else []) + ([_sps_key(arm.sps_opts)] if "sps" in arm.needs else [])


class _StageGate:
    """A Stage I / II run that arm jobs wait for: they may be taken by another worker while the stage runs."""

    def __init__(self, stage):
        self.stage, self.error = stage, None
        self.finished = threading.Event()
        if stage.done():
            self.finished.set()

    def run(self):
        try:
            return run_stage(self.stage, os.path.join(self.stage.output_dir, "stage.log"), show_progress=False)
        except Exception as error:
            self.error = error
            raise
        finally:
            self.finished.set()

    def wait(self):
        self.finished.wait()
        if self.error is not None or not self.stage.done():
            raise RuntimeError(f"Stage {self.stage.name} did not finish ({self.error}); see "
                               f"{os.path.join(self.stage.output_dir, 'stage.log')}")


def _stage_gates(exp, train_root):
    """{seed: {gate key: gate}} for the hand-overs some arm needs: "text" (Stage I), "sps" (Stage II) and one
    "sps <options>" per distinct ``sps_opts`` of the arms (see ``_gate_keys``)."""
    sps_variants = {tuple(arm.sps_opts) for arm in exp.arms if "sps" in arm.needs}
    gates = {}
    for seed in exp.seeds:
        stage1 = _stage_dirs(exp, seed, train_root)[0]
        gates[seed] = {"text": _StageGate(stage1)} if any("text" in arm.needs for arm in exp.arms) else {}
        for sps_opts in sorted(sps_variants):
            gates[seed][_sps_key(sps_opts)] = _StageGate(_stage_dirs(exp, seed, train_root, sps_opts)[1])
    return gates


def _arm_opts(exp, arm, seed, train_root, gates):
    opts = list(exp.opts) + ["DATASETS.ROOT", train_root, "SEED", seed] + list(arm.opts)
    if "text" in arm.needs:
        opts += ["MODEL.DPMPP.TEXT_PROTOTYPES", gates[seed]["text"].stage.artifact_path]
    if "sps" in arm.needs:
        opts += ["SPT.ENABLED", "True", "SPT.SPS_WEIGHTS", gates[seed][_gate_keys(arm)[-1]].stage.artifact_path]
    return opts


def _evaluate(trained_dir, run_dir, exp, log_path, interpolate=1.0):
    command = [sys.executable, os.path.join(tools_dir(exp.tools_dir), "evaluate_protocol.py"), "--config-file",
               os.path.join(trained_dir, "config.yaml"), "--training", exp.training, "--benchmark-dir",
               exp.benchmark_dir, "--splits", *exp.splits, "--sie", *exp.eval_sie]
    if exp.eval_spaces:
        command += ["--spaces", *exp.eval_spaces]
    # the list-valued options above end at the next "--" option: the KEY VALUE overrides come after a plain one
    command += ["--output", os.path.join(run_dir, "protocol.json"), "--interpolate", str(interpolate),
                "MODEL.WEIGHTS", os.path.join(trained_dir, "model_final.pth")]
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"protocol evaluation failed (exit {code}); see {log_path}")


def _train_and_evaluate(exp, arm, seed, train_root, gates):
    run_dir, trained_dir = arm.run_dir(exp.root, seed), arm.trained_dir(exp.root, seed)
    os.makedirs(run_dir, exist_ok=True)
    log, seconds = os.path.join(run_dir, "train.log"), 0.0
    if not arm.weights_of:
        stage = Stage(f"{arm.name}/seed{seed}", "train_net.py", arm.config, run_dir, "model_final.pth",
                      _arm_opts(exp, arm, seed, train_root, gates), tools_dir=exp.tools_dir)
        seconds = 0.0 if stage.done() else run_stage(stage, log, show_progress=False)
    elif not os.path.isfile(os.path.join(trained_dir, "model_final.pth")):
        raise RuntimeError(f"arm {arm.name} evaluates {arm.weights_of}, whose run {trained_dir} has no model_final.pth")
    if not os.path.isfile(os.path.join(run_dir, "protocol.json")):
        _evaluate(trained_dir, run_dir, exp, log, arm.interpolate)
    result = dict(arm=arm.name, config=arm.config, opts=list(arm.opts), needs=list(arm.needs),
                  sps_opts=list(arm.sps_opts), seed=seed,
                  training=exp.training, benchmark_id=benchmark_id(), train_seconds=round(seconds, 1))
    atomic_write_text(json.dumps(result, indent=2), os.path.join(run_dir, "result.json"))
    return result


def _finished(exp, arm, seed):
    return os.path.isfile(os.path.join(arm.run_dir(exp.root, seed), "result.json"))


def _arm_job(exp, arm, seed, train_root, gates):
    def job():
        for key in _gate_keys(arm):
            gates[seed][key].wait()
        return _train_and_evaluate(exp, arm, seed, train_root, gates)
    return (arm.name, seed), job


def _training_jobs(exp, train_root, gates):
    """(key, callable) of every unfinished stage and trained arm, in the order the workers take them: each
    Stage I, then the arms that need no stage (they train while Stage II runs), then each Stage II, then the arms
    that need it, then the rest. A job waits for the stages it needs, which were always taken before it (a worker
    never waits for a job still queued)."""
    def arm_jobs(select):
        return [_arm_job(exp, arm, seed, train_root, gates) for seed in exp.seeds for arm in exp.arms
                if not arm.weights_of and select(set(arm.needs)) and not _finished(exp, arm, seed)]

    def stage_jobs(need):
        return [(f"seed {seed} stage {gate.stage.name}" + key[len(need):], gate.run) for seed, g in gates.items()
                for key, gate in g.items() if key.split()[0] == need and not gate.finished.is_set()]

    return (stage_jobs("text") + arm_jobs(lambda needs: not needs) + stage_jobs("sps")
            + arm_jobs(lambda needs: "sps" in needs) + arm_jobs(lambda needs: needs == {"text"}))


def _describe(result):
    return f"{result['train_seconds']:.0f} s" if isinstance(result, dict) else f"{result:.0f} s"


def run_experiment(exp):
    """Train and evaluate every (arm, seed) that has no result yet; returns {(arm, seed): protocol results}."""
    train_root = ensure_benchmark(exp.benchmark_dir, exp.training, "val")
    for split in exp.splits:
        ensure_benchmark(exp.benchmark_dir, exp.training, split)
    gates = _stage_gates(exp, train_root)
    jobs = _training_jobs(exp, train_root, gates)
    logger.info("experiment: %d stage / training run(s) on %d worker(s)", len(jobs), exp.jobs)
    _run_parallel(jobs, exp.jobs, _describe)
    derived = [_arm_job(exp, arm, seed, train_root, gates) for seed in exp.seeds for arm in exp.arms
               if arm.weights_of and not _finished(exp, arm, seed)]
    if derived:
        logger.info("experiment: %d evaluation run(s) of trained weights on %d worker(s)", len(derived), exp.jobs)
        _run_parallel(derived, exp.jobs, _describe)
    return load_results(exp)


def load_results(exp):
    """{(arm name, seed): protocol.json contents} of the finished runs."""
    results = {}
    for arm in exp.arms:
        for seed in exp.seeds:
            path = os.path.join(arm.run_dir(exp.root, seed), "protocol.json")
            if os.path.isfile(path):
                with open(path) as f:
                    results[(arm.name, seed)] = json.load(f)
    return results


# ------------------------------------------------------------------------------------------ reporting
def _space_result(protocol, split, setting):
    spaces = protocol["splits"][split][setting.sie if setting.sie in protocol["splits"][split] else "sie_off"]
    if setting.space not in spaces:
        return None
    return spaces[setting.space]


def arm_values(protocol, split, setting):
    """dict(mAP, R1, mAP_holistic, own_camera, per_query_ap) of one run under ``setting`` (None if the space is
    missing). Masked matching is used when asked and the run has masks."""
    space = _space_result(protocol, split, setting)
    if space is None:
        return None
    matching = setting.matching if setting.matching in space else "plain"
    summary = space[matching]
    per_query = space["per_query_ap"][matching if matching in space["per_query_ap"] else "plain"]
    oracle = [space[key]["mAP"] for key in (f"oracle_{keep:g}" for keep in ORACLE_KEEP_FRACTIONS) if key in space]
    return dict(mAP=summary["mAP"], R1=summary["Rank-1"], mAP_holistic=space["holistic"]["mAP"],
                R1_holistic=space["holistic"]["Rank-1"], own_camera=summary["own_camera_top1"],
                oracle_mAP=max(oracle) if oracle else float("nan"),
                per_query_ap=np.asarray(per_query, float), matching=matching)


def comparison_rows(results, arms, seeds, split, setting, reference):
    """One dict per arm: mean ± std over seeds of mAP / R1 (occluded, holistic), and the paired delta of mAP
    against ``reference``: per-seed deltas (mean ± std) and a bootstrap interval over queries of the
    seed-averaged per-query AP difference."""
    rows = []
    reference_values = {s: arm_values(results[(reference, s)], split, setting) for s in seeds
                        if (reference, s) in results}
    for arm in arms:
        values = {s: arm_values(results[(arm.name, s)], split, setting) for s in seeds if (arm.name, s) in results}
        values = {s: v for s, v in values.items() if v is not None}
        if not values:
            continue
        row = dict(arm=arm.name, seeds=sorted(values), matching=next(iter(values.values()))["matching"])
        for key in ("mAP", "R1", "mAP_holistic", "R1_holistic", "own_camera", "oracle_mAP"):
            row[key] = seed_mean_std([v[key] for v in values.values()])
        paired = [s for s in values if s in reference_values and reference_values[s] is not None]
        if arm.name != reference and paired:
            deltas = [values[s]["mAP"] - reference_values[s]["mAP"] for s in paired]
            per_query = np.mean([values[s]["per_query_ap"] - reference_values[s]["per_query_ap"] for s in paired], 0)
            per_query = per_query[np.isfinite(per_query)]
            row["delta"] = seed_mean_std(deltas)
            row["delta_ci"] = bootstrap_interval(100.0 * per_query)
            row["holistic_delta"] = seed_mean_std([values[s]["mAP_holistic"] - reference_values[s]["mAP_holistic"]
                                               for s in paired])
        rows.append(row)
    return rows


def _fmt(pair):
    return f"{pair[0]:.1f} ± {pair[1]:.1f}"


def verdict(row):
    """"gain" / "loss" when the delta is outside both the bootstrap interval's zero and twice the seed std."""
    if "delta" not in row:
        return "reference"
    mean, std = row["delta"]
    low, high = row["delta_ci"]
    if (low > 0 or high < 0) and abs(mean) > 2 * std:
        return "gain" if mean > 0 else "loss"
    return "no difference"


def comparison_markdown(rows, split, setting, chance=None):
    from tabulate import tabulate
    headers = ["arm", "matching", "mAP occ.", "R1 occ.", "mAP hol.", "own-cam top-1 %", "Δ mAP vs ref (per seed)",
               "Δ 95% CI (queries)", "Δ mAP hol.", "reading", "oracle-mask mAP occ."]
    body = []
    if chance:
        body.append(["random ranking", "–", _fmt(chance["mAP"]), _fmt(chance["Rank-1"]), "", "", "", "", "", "", ""])
    for row in rows:
        oracle = row.get("oracle_mAP", (float("nan"), 0.0))
        body.append([row["arm"], row["matching"], _fmt(row["mAP"]), _fmt(row["R1"]), _fmt(row["mAP_holistic"]),
                     f"{row['own_camera'][0]:.0f}", _fmt(row["delta"]) if "delta" in row else "",
                     "[{:.1f}, {:.1f}]".format(*row["delta_ci"]) if "delta_ci" in row else "",
                     _fmt(row["holistic_delta"]) if "holistic_delta" in row else "", verdict(row),
                     _fmt(oracle) if np.isfinite(oracle[0]) else "–"])
    title = (f"Split {split}, {setting.describe()}; mean ± std over seeds (%). Oracle-mask mAP: the same features "
             "matched with each query's oracle channel mask (best keep fraction; an upper bound, docs/EVALUATION.md)")
    return f"{title}\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


SPT_STATISTICS = ("spt_fraction", "spt_transferred_fraction", "spt_covered_fraction", "spt_mean_oiou")


def spt_statistics(run_dir, skip=0.25):
    """Means of the SPT synthesis statistics a Stage III run logged to metrics.json (``synthesis_statistics``),
    over the iterations after the first ``skip`` of training; None when the run logged none."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "spt_fraction" in r]
    if not records:
        return None
    last = max(r["iteration"] for r in records)
    kept = [r for r in records if r["iteration"] >= skip * last] or records
    return {key: float(np.mean([r[key] for r in kept])) for key in SPT_STATISTICS}


def spt_statistics_markdown(exp):
    """One row per arm that synthesises: mean ± std over seeds of its SPT statistics (%), or "" if none did."""
    from tabulate import tabulate
    body = []
    for arm in exp.arms:
        per_seed = [s for s in (spt_statistics(arm.run_dir(exp.root, seed)) for seed in exp.seeds) if s]
        if per_seed:
            body.append([arm.name, len(per_seed)] + [_fmt(seed_mean_std([100 * s[key] for s in per_seed]))
                                                     for key in SPT_STATISTICS])
    if not body:
        return ""
    headers = ["arm", "seeds", "synthesised % of batch", "patches from the partner %", "anchor's salient patches "
               "covered %", "mean OIoU (× 100)"]
    return ("SPT synthesis statistics (Stage III metrics.json, last three quarters of training; mean ± std over "
            "seeds)\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n")


def protocol_chance(benchmark_dir, training, split, draws=100, seed=0):
    """Random-ranking mAP / Rank-1 (mean, std over draws) of a split's occluded queries."""
    from ..data.benchmark import benchmark_split
    from ..evaluation.protocol import per_query_metrics, summarize
    data = benchmark_split(ensure_benchmark(benchmark_dir, training, split))
    _, q_pids, q_cams = data["query"]
    _, g_pids, g_cams = data["gallery"]
    rng = np.random.default_rng(seed)
    values = [summarize(per_query_metrics(rng.random((len(q_pids), len(g_pids))), q_pids, g_pids, q_cams, g_cams))
              for _ in range(draws)]
    return {m: seed_mean_std([v[m] for v in values]) for m in ("mAP", "Rank-1")}
