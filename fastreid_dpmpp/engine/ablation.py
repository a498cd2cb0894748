"""The paper's ablation tables (III, IV, VI, VII) on the synthetic occluded benchmark, with several seeds.

Every row is a config file in ``configs/Synthetic/ablation/<backbone>/`` that flips its row's switches; a row that
appears in several tables (e.g. "full" in III, IV and VI) is one file and is trained once per seed. Per seed,
Stage I (text prototypes T, CLIP rows only) and Stage II (SPS, rows with SPT) run once and are handed to every
Stage III run of that seed, as in the three-stage pipeline. Runs are fast-reid training processes
(``tools/train_net.py``) with their own OUTPUT_DIR; a run whose ``result.json`` exists is reused, an interrupted
one resumes (``--resume``). Metrics are those of fast-reid's evaluation at the end of training, read back from
the run's ``eval_results.json``.

Output folder::

    stages/seed<k>/stage1|stage2      Stage I / II of seed k
    <backbone>/<row>/seed<k>/         one Stage III run (fast-reid OUTPUT_DIR + result.json)
    table_<T>.md / .json / .png       the aggregated table (mean ± std over seeds) and its plot
"""
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import atomic_write_text
from ..evaluation.protocol import seed_mean_std
from ..resources import ResourceNotFoundError, configs_dir
from .defaults import load_config
from .eval_results import EVAL_RESULTS_FILE
from .pipeline import Stage, plan_stages, run_stage

__all__ = ["Row", "Table", "TABLES", "as_table", "select_rows", "BACKBONES", "TEST_SETS", "METRICS", "RunSpec", "plan_runs",
           "read_final_metrics", "finished_runs", "missing_runs", "summarise", "chance_metrics", "markdown_table", "plot_table", "run_ablation"]

logger = logging.getLogger("fastreid.dpmpp.ablation")

ABLATION_SUBDIR = os.path.join("Synthetic", "ablation")
BASE_CONFIG_NAME = "Base-Ablation.yml"


def ablation_config_dir(config_dir=None):
    """configs/Synthetic/ablation of the configs/ folder ``config_dir`` (None: ``resources.configs_dir()``, i.e.
    $FASTREID_DPMPP_CONFIGS or the checkout the package runs from)."""
    return os.path.join(configs_dir(config_dir), ABLATION_SUBDIR)


try:  # the checkout's (or $FASTREID_DPMPP_CONFIGS's) row configs; None in an install without configs/
    CONFIG_DIR = ablation_config_dir()
    BASE_CONFIG = os.path.join(CONFIG_DIR, BASE_CONFIG_NAME)
except ResourceNotFoundError:
    CONFIG_DIR = BASE_CONFIG = None
BACKBONES = {"clip": "CLIP-ViT", "vit": "vanilla ViT"}
TEST_SETS = {"OccludedDuke": "occluded queries", "OccludedDukeHolisticQuery": "holistic queries"}
METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP")


@dataclass(frozen=True)
class Row:
    label: str
    config: str  # file name in configs/Synthetic/ablation/<backbone>/


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    rows: tuple
    backbones: tuple = ("clip",)


TABLES = {
    "III": Table("III", "Component ablation (paper Table III)", (
        Row("baseline", "baseline.yml"),
        Row("+SPT", "spt.yml"),
        Row("+SPT+OIoU", "spt_oiou.yml"),
        Row("+SPT+OIoU+MR", "spt_oiou_mr.yml"),
        Row("+DPM", "dpm.yml"),
        Row("+DPM+HMG", "dpm_hmg.yml"),
        Row("+DPM+HMG+HEM", "dpm_hmg_hem.yml"),
        Row("full (DPM++)", "full.yml"),
    ), backbones=("clip", "vit")),
    "IV": Table("IV", "Where the mask acts (paper Table IV)", (
        Row("prototype, before norm. (DPM++)", "full.yml"),
        Row("prototype, after norm.", "mask_prototype_after.yml"),
        Row("feature, before norm.", "mask_feature_before.yml"),
        Row("feature, after norm.", "mask_feature_after.yml"),
        Row("both, before norm.", "mask_both_before.yml"),
        Row("both, after norm.", "mask_both_after.yml"),
    )),
    "VI": Table("VI", "Which prototype is masked (paper Table VI)", (
        Row("w/o mask", "no_mask.yml"),
        Row("visual prototype P (DPM++)", "full.yml"),
        Row("text prototype T", "text_prototype.yml"),
    )),
    "VII": Table("VII", "Random erasing vs SPT (paper Table VII)", (
        Row("Random Erasing", "baseline.yml"),
        Row("SPT", "spt_no_rea.yml"),
        Row("Random Erasing + SPT", "spt_oiou_mr.yml"),
    )),
}


@dataclass(frozen=True)
class RunSpec:
    backbone: str
    config: str
    seed: int
    config_dir: str = field(default=None, compare=False)  # configs/Synthetic/ablation; None: ablation_config_dir()

    @property
    def name(self):
        return f"{self.backbone}/{os.path.splitext(self.config)[0]}/seed{self.seed}"

    @property
    def config_file(self):
        return os.path.join(self.config_dir or ablation_config_dir(), self.backbone, self.config)

    @property
    def config_label(self):
        """The row config as the repository names it (configs/Synthetic/ablation/<backbone>/<file>)."""
        return os.path.join("configs", ABLATION_SUBDIR, self.backbone, self.config)

    def output_dir(self, root):
        return os.path.join(root, self.name)


def as_table(table):
    """A Table, or the Table of a key of TABLES ("III", "IV", "VI", "VII")."""
    if isinstance(table, Table):
        return table
    if table not in TABLES:
        raise ValueError(f"ablation: unknown table {table!r}; choose from {sorted(TABLES)}")
    return TABLES[table]


def select_rows(table, configs=None, backbones=None):
    """The table restricted to some row configs (file names) and / or backbones (e.g. a longer-budget subset)."""
    table = as_table(table)
    rows = tuple(r for r in table.rows if not configs or r.config in configs)
    chosen = tuple(b for b in table.backbones if not backbones or b in backbones)
    if not rows or not chosen:
        raise ValueError(f"ablation: table {table.key} has no row in {configs} for backbone(s) {backbones} "
                         f"(rows: {[r.config for r in table.rows]}, backbones: {list(table.backbones)})")
    return Table(table.key, table.title, rows, chosen)


def plan_runs(tables, seeds, config_dir=None):
    """The distinct Stage III runs the tables need, in a stable order (a row shared by tables appears once); their
    row configs in the configs/ folder ``config_dir`` (None: see :func:`ablation_config_dir`)."""
    row_dir = ablation_config_dir(config_dir) if config_dir else None
    runs = []
    for table in map(as_table, tables):  # table by table, so that the first table is complete first
        for seed in seeds:
            for backbone in table.backbones:
                for row in table.rows:
                    spec = RunSpec(backbone, row.config, int(seed), row_dir)
                    if spec not in runs:
                        runs.append(spec)
    return runs


def _check_row_configs(runs):
    missing = sorted({r.config_file for r in runs if not os.path.isfile(r.config_file)})
    if missing:
        raise FileNotFoundError(f"ablation: row config(s) missing: {missing}")


def read_final_metrics(results_file, test_sets=tuple(TEST_SETS), metrics=METRICS):
    """{test set: {metric: value}} from the run's final evaluation (``eval_results.json``, written by
    DPMPPTrainer.test)."""
    if not os.path.isfile(results_file):
        raise FileNotFoundError(f"ablation: {results_file} does not exist (the run did not finish its evaluation)")
    with open(results_file) as f:
        results = json.load(f)
    missing = [f"{name}/{metric}" for name in test_sets for metric in metrics
               if metric not in results.get(name, {})]
    if missing:
        raise ValueError(f"ablation: {results_file} lacks {missing} (DATASETS.TESTS must list {list(test_sets)})")
    return {name: {metric: float(results[name][metric]) for metric in metrics} for name in test_sets}


def _stage_opts(spec, stage_dirs, root_opts):
    """The hand-over keys of Stage III: T for CLIP rows (a vanilla ViT has no text tower), SPS for every row
    (read only when the row enables SPT)."""
    stage1, stage2 = stage_dirs[spec.seed]
    opts = list(root_opts) + ["SEED", spec.seed, "SPT.SPS_WEIGHTS", stage2.artifact_path]
    if spec.backbone == "clip":
        opts += ["MODEL.DPMPP.TEXT_PROTOTYPES", stage1.artifact_path]
    return opts


def _result_path(spec, root):
    return os.path.join(spec.output_dir(root), "result.json")


def _train_and_read(spec, root, opts, tools_dir=None):
    out = spec.output_dir(root)
    stage = Stage(spec.name, "train_net.py", spec.config_file, out, "model_final.pth", opts, tools_dir=tools_dir)
    seconds = 0.0 if stage.done() else run_stage(stage, os.path.join(out, "train.log"), show_progress=False)
    result = {"run": spec.name, "config": spec.config_label, "seed": spec.seed,
              "train_seconds": round(seconds, 1),
              "metrics": read_final_metrics(os.path.join(out, EVAL_RESULTS_FILE))}
    atomic_write_text(json.dumps(result, indent=2), _result_path(spec, root))
    return result


def _needs_stage2(runs, opts):
    return any(load_config(r.config_file, list(opts)).SPT.ENABLED for r in runs)


def _run_parallel(jobs, num_jobs, describe):
    """Run ``(key, callable)`` jobs on ``num_jobs`` threads (each job is a child process), logging progress.
    Returns {key: result} of the jobs that succeeded (failures are logged)."""
    results, start = {}, time.time()
    with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
        futures = {pool.submit(fn): key for key, fn in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            key = futures[future]
            try:
                results[key] = future.result()
            except Exception as error:  # one failed run must not discard the others; re-running retries it
                logger.error("[%d/%d] %s FAILED: %s", done, len(jobs), key, error)
                continue
            logger.info("[%d/%d] %s: %s (%.0f s elapsed)", done, len(jobs), key, describe(results[key]),
                        time.time() - start)
    return results


def _prepare_stages(seeds, root, opts, need_stage1, need_stage2, num_jobs, config_dir=None, tools_dir=None):
    base_config = os.path.join(ablation_config_dir(config_dir), BASE_CONFIG_NAME)
    stage_dirs = {seed: plan_stages(base_config, os.path.join(root, "stages", f"seed{seed}"),
                                    list(opts) + ["SEED", seed], tools_dir=tools_dir)[:2] for seed in seeds}
    jobs = []
    for seed, (stage1, stage2) in stage_dirs.items():
        for stage, needed in ((stage1, need_stage1), (stage2, need_stage2)):
            if needed and not stage.done():
                log = os.path.join(stage.output_dir, "stage.log")
                jobs.append((f"seed {seed} stage {stage.name}",
                             lambda stage=stage, log=log: run_stage(stage, log, show_progress=False)))
    if jobs:
        logger.info("Stage I / II: %d job(s) on %d worker(s)", len(jobs), num_jobs)
        _run_parallel(jobs, num_jobs, lambda seconds: f"{seconds:.0f} s")
    return stage_dirs


def finished_runs(tables, seeds, root):
    """{run name: result dict} of the runs of these tables that have a ``result.json`` (nothing is trained)."""
    results = {}
    for spec in plan_runs(tables, seeds):
        path = _result_path(spec, os.path.abspath(root))
        if os.path.isfile(path):
            with open(path) as f:
                results[spec.name] = json.load(f)
    return results


def run_ablation(tables, seeds, root, opts=(), num_jobs=1, config_dir=None, tools_dir=None):
    """Train every run the tables need (reusing finished ones); returns {run name: result dict}. Row configs from the
    configs/ folder ``config_dir``, scripts from ``tools_dir`` (None: ``fastreid_dpmpp.resources``)."""
    runs = plan_runs(tables, seeds, config_dir)
    _check_row_configs(runs)
    root = os.path.abspath(root)
    stage_dirs = _prepare_stages(seeds, root, opts, any(r.backbone == "clip" for r in runs),
                                 _needs_stage2(runs, opts), num_jobs, config_dir, tools_dir)
    results, jobs = finished_runs(tables, seeds, root), []
    for spec in runs:
        if spec.name in results:
            continue
        jobs.append((spec.name, lambda spec=spec: _train_and_read(spec, root, _stage_opts(spec, stage_dirs, opts),
                                                                  tools_dir)))
    logger.info("Stage III: %d run(s) to train, %d reused, %d worker(s)", len(jobs), len(results), num_jobs)
    results.update(_run_parallel(jobs, num_jobs, lambda r: "mAP occ. {:.1f}, holistic {:.1f}, {:.0f} s".format(
        r["metrics"]["OccludedDuke"]["mAP"], r["metrics"]["OccludedDukeHolisticQuery"]["mAP"], r["train_seconds"])))
    return results


def missing_runs(table, results, seeds):
    """Names of the runs of a table that have no result (failed or not run)."""
    table = as_table(table)
    return [RunSpec(b, row.config, int(s)).name for s in seeds for b in table.backbones for row in table.rows
            if RunSpec(b, row.config, int(s)).name not in results]


def summarise(table, results, seeds):
    """{backbone: [{"label", "config", "values": {test set: {metric: [per-seed values]}}}]} for one table."""
    table = as_table(table)
    summary = {}
    for backbone in table.backbones:
        rows = []
        for row in table.rows:
            names = [RunSpec(backbone, row.config, int(s)).name for s in seeds]
            missing = [n for n in names if n not in results]
            if missing:
                raise KeyError(f"ablation: table {table.key} needs run(s) {missing} that have no result")
            values = {test: {m: [results[n]["metrics"][test][m] for n in names] for m in METRICS} for test in TEST_SETS}
            rows.append({"label": row.label, "config": f"{backbone}/{row.config}", "values": values})
        summary[backbone] = rows
    return summary


def chance_metrics(data_root, draws=200, seed=0):
    """{test set: {metric: [value per draw]}} of random rankings of each test set's gallery (fast-reid's
    evaluate_rank with fast-reid's exclusions): the level a model that learned nothing reaches."""
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.evaluation.rank import evaluate_rank

    rng = np.random.default_rng(seed)
    chance = {}
    for name in TEST_SETS:
        dataset = DATASET_REGISTRY.get(name)(root=data_root)
        q_pids, q_cams = (np.array([item[i] for item in dataset.query]) for i in (1, 2))
        g_pids, g_cams = (np.array([item[i] for item in dataset.gallery]) for i in (1, 2))
        values = {m: [] for m in METRICS}
        for _ in range(draws):
            cmc, aps, _ = evaluate_rank(rng.random((len(q_pids), len(g_pids))), q_pids, g_pids, q_cams, g_cams,
                                        max_rank=10, use_cython=False)
            for metric, value in zip(METRICS, (cmc[0], cmc[4], cmc[9], np.mean(aps))):
                values[metric].append(100.0 * value)
        chance[name] = values
    return chance


def _mean_std(values):
    return "{:.1f} ± {:.1f}".format(*seed_mean_std(values))


def markdown_table(table, summary, seeds, chance=None):
    """The table in GitHub markdown: mean ± std (sample std over seeds) per metric, occluded then holistic;
    ``chance`` (``chance_metrics``) adds a first row with the random-ranking level (mean ± std over draws)."""
    from tabulate import tabulate
    headers = ["backbone", "row"] + [f"{m} ({'occ.' if test == 'OccludedDuke' else 'hol.'})"
                                     for test in TEST_SETS for m in METRICS]
    body = [["–", "random ranking (chance)"] + [_mean_std(chance[test][m]) for test in TEST_SETS for m in METRICS]
            ] if chance else []
    body += [[BACKBONES[backbone], row["label"]] + [_mean_std(row["values"][test][m])
                                                     for test in TEST_SETS for m in METRICS]
             for backbone, rows in summary.items() for row in rows]
    table = as_table(table)
    title = f"Table {table.key}: {table.title}, mean ± std over {len(seeds)} seed(s) {list(seeds)} (%)"
    return f"{title}\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def plot_table(table, summary, path, chance=None):
    """mAP and Rank-1 per row (mean ± std, seeds as dots), occluded vs holistic queries, one panel per backbone;
    a dashed line at the random-ranking level when ``chance`` is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = as_table(table)
    panels = [(backbone, metric) for backbone in summary for metric in ("mAP", "Rank-1")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(table.rows) + 1.6),
                                sharey=True, squeeze=False)
    for ax, (backbone, metric) in zip(axes[0], panels):
        rows = summary[backbone]
        positions = np.arange(len(rows))
        for offset, (test, colour) in zip((-0.18, 0.18), zip(TEST_SETS, ("tab:red", "tab:blue"))):
            values = np.array([row["values"][test][metric] for row in rows])  # (rows, seeds)
            ax.barh(positions + offset, values.mean(1), height=0.34, color=colour, alpha=0.55,
                    xerr=values.std(1, ddof=1) if values.shape[1] > 1 else None, label=TEST_SETS[test])
            for seed_values, y in zip(values, positions + offset):
                ax.plot(seed_values, np.full_like(seed_values, y), "k.", markersize=3)
        if chance:
            ax.axvline(np.mean(chance["OccludedDuke"][metric]), color="k", linestyle="--", linewidth=1,
                       label="random ranking")
        ax.set_yticks(positions, [row["label"] for row in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} (%)")
        ax.set_title(f"{BACKBONES[backbone]}: {metric}")
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.suptitle(f"Table {table.key}: {table.title} (synthetic benchmark)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)
