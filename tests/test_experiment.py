"""engine/experiment.py's scheduling: Stage I / II and the training runs share one pool of workers; a run starts
only after the stages it needs have written their artifacts, runs that need no stage train while Stage II runs,
and a failed stage fails only the runs that need it."""
import logging
import os
import threading
import time

import pytest

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.engine import experiment as E
from fastreid_dpmpp.engine.pipeline import Stage


def _fake_world(tmp_path, monkeypatch, stage_seconds, failing_stage=None):
    events, lock = [], threading.Lock()

    def record(what):
        with lock:
            events.append((time.monotonic(), what))

    def stage_dirs(exp, seed, train_root, sps_opts=()):
        names = ("I", " ".join(("II",) + tuple(sps_opts)))
        return [Stage(name, "unused.py", "unused.yml", str(tmp_path / f"seed{seed}" / name), "artifact.pt")
                for name in names]

    def run_stage(stage, log_file, show_progress=True):
        record(("start", stage.name))
        time.sleep(stage_seconds[stage.name])
        if stage.name == failing_stage:
            record(("fail", stage.name))
            raise RuntimeError(f"stage {stage.name} broke")
        os.makedirs(stage.output_dir, exist_ok=True)
        open(stage.artifact_path, "w").close()
        record(("end", stage.name))
        return stage_seconds[stage.name]

    def train_and_evaluate(exp, arm, seed, train_root, gates):
        record(("start", arm.name))
        time.sleep(0.05)
        record(("end", arm.name))
        return dict(train_seconds=0.05)

    monkeypatch.setattr(E, "ensure_benchmark", lambda root, training, split: str(tmp_path / split))
    monkeypatch.setattr(E, "_stage_dirs", stage_dirs)
    monkeypatch.setattr(E, "run_stage", run_stage)
    monkeypatch.setattr(E, "_train_and_evaluate", train_and_evaluate)
    arms = [E.Arm("dpmpp", "c.yml", needs=("text", "sps")), E.Arm("baseline", "c.yml"),
            E.Arm("dpm", "c.yml", needs=("text",))]
    exp = E.Experiment(arms=arms, seeds=[0], training="occluded", root=str(tmp_path / "runs"),
                       benchmark_dir=str(tmp_path), stage_config="unused.yml", splits=("test1",), jobs=2)
    return exp, events


def _time(events, what):
    return next(t for t, w in events if w == what)


def test_runs_wait_for_their_stages_and_independent_runs_fill_the_stage_time(tmp_path, monkeypatch):
    exp, events = _fake_world(tmp_path, monkeypatch, {"I": 0.5, "II": 0.6})
    gates = E._stage_gates(exp, "train")
    keys = [key for key, _ in E._training_jobs(exp, "train", gates)]
    assert keys == ["seed 0 stage I", ("baseline", 0), "seed 0 stage II", ("dpmpp", 0), ("dpm", 0)]
    E.run_experiment(exp)
    assert _time(events, ("start", "baseline")) < _time(events, ("end", "I"))      # trains beside Stage I
    assert _time(events, ("start", "dpmpp")) >= _time(events, ("end", "II"))
    assert _time(events, ("start", "dpm")) >= _time(events, ("end", "I"))
    assert _time(events, ("start", "II")) < _time(events, ("end", "I"))          # the baseline's worker took it


def test_a_failed_stage_fails_only_the_runs_that_need_it(tmp_path, monkeypatch):
    exp, events = _fake_world(tmp_path, monkeypatch, {"I": 0.05, "II": 0.1}, failing_stage="II")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("fastreid")   # fast-reid's setup_logger stops propagation: listen here
    logger.addHandler(handler)
    try:
        E.run_experiment(exp)
    finally:
        logger.removeHandler(handler)
    started = {w[1] for _, w in events if w[0] == "start"}
    assert {"baseline", "dpm"} <= started and "dpmpp" not in started
    assert any("('dpmpp', 0) FAILED: Stage II did not finish (stage II broke)" in m for m in messages)


def test_finished_stages_are_not_rerun(tmp_path, monkeypatch):
    exp, events = _fake_world(tmp_path, monkeypatch, {"I": 0.0, "II": 0.0})
    for stage in E._stage_dirs(exp, 0, "train"):
        os.makedirs(stage.output_dir)
        open(stage.artifact_path, "w").close()
    keys = [key for key, _ in E._training_jobs(exp, "train", E._stage_gates(exp, "train"))]
    assert keys == [("baseline", 0), ("dpmpp", 0), ("dpm", 0)]


def test_arms_with_their_own_stage_ii_options_share_stage_i_and_wait_for_their_own_stage_ii(tmp_path, monkeypatch):
    exp, events = _fake_world(tmp_path, monkeypatch, {"I": 0.05, "II": 0.05, "II STAGE2.RHO 0.5": 0.3})
    exp.arms.append(E.Arm("dpmpp_rho", "c.yml", needs=("text", "sps"), sps_opts=("STAGE2.RHO", "0.5")))
    gates = E._stage_gates(exp, "train")
    keys = [key for key, _ in E._training_jobs(exp, "train", gates)]
    assert keys == ["seed 0 stage I", ("baseline", 0), "seed 0 stage II", "seed 0 stage II STAGE2.RHO 0.5 STAGE2.RHO 0.5",
                    ("dpmpp", 0), ("dpmpp_rho", 0), ("dpm", 0)]
    rho_weights = E._arm_opts(exp, exp.arms[-1], 0, "train", gates)[-1]
    assert rho_weights == str(tmp_path / "seed0" / "II STAGE2.RHO 0.5" / "artifact.pt")
    assert E._arm_opts(exp, exp.arms[0], 0, "train", gates)[-1] == str(tmp_path / "seed0" / "II" / "artifact.pt")
    E.run_experiment(exp)
    assert [w for _, w in events].count(("start", "I")) == 1
    assert _time(events, ("start", "dpmpp_rho")) >= _time(events, ("end", "II STAGE2.RHO 0.5"))


def test_stage_ii_options_give_stage_ii_its_own_folder_and_config(tmp_path):
    from _tiny import REPO
    exp = E.Experiment(arms=[], seeds=[1], training="occluded", root=str(tmp_path), benchmark_dir=str(tmp_path),
                       stage_config=os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml"))
    stage1, stage2 = E._stage_dirs(exp, 1, "train")
    stage1_rho, stage2_rho = E._stage_dirs(exp, 1, "train", ("STAGE2.RHO", "0.5"))
    assert stage1_rho.output_dir == stage1.output_dir
    assert stage2_rho.output_dir == str(tmp_path / "stages" / "seed1" / "sps_STAGE2.RHO=0.5" / "stage2")
    assert stage2_rho.opts[-2:] == ["STAGE2.RHO", "0.5"] and "STAGE2.RHO" not in stage2.opts


def test_compare_rejects_an_unknown_arm_key(tmp_path):
    from _tiny import load_tool_module
    compare = load_tool_module("compare", "compare_tool_keys")
    spec = tmp_path / "spec.yml"
    spec.write_text("training: occluded\nseeds: [1]\nstage_config: c.yml\n"
                    "arms:\n  - {name: a, config: c.yml, stage_opts: [STAGE2.RHO, 0.5]}\n")
    with pytest.raises(ValueError, match=r"arm 'a': unknown key\(s\) \['stage_opts'\]"):
        compare.load_spec(str(spec))


def test_compare_trains_the_asked_subset_and_reports_every_arm(tmp_path, monkeypatch):
    from _tiny import REPO, load_tool_module
    compare = load_tool_module("compare", "compare_tool_subset")
    spec = os.path.join(REPO, "projects", "DPMHeadCNN", "dpmhead_cnn_compare.yml")
    trained, reported = [], []
    monkeypatch.setattr(compare, "run_experiment", lambda exp: trained.append(exp))
    monkeypatch.setattr(compare, "load_results", lambda exp: reported.append(exp) or {})
    monkeypatch.setattr(compare, "protocol_chance", lambda *args: {"mAP": (1.0, 0.1), "Rank-1": (0.5, 0.1)})
    references = []
    monkeypatch.setattr(compare, "comparison_rows", lambda *args: references.append(args[-1]) or [])
    out = str(tmp_path / "out")
    compare.main(["--spec", spec, "--output-dir", out, "--arms", "dpm", "bagtricks", "--seeds", "2"])
    assert [arm.name for arm in trained[0].arms] == ["bagtricks", "dpm"] and trained[0].seeds == [2]
    assert len(reported[0].arms) == 5 and reported[0].seeds == [1, 2, 3]
    assert set(references) == {"bagtricks"}
    compare.main(["--spec", spec, "--output-dir", out, "--report-only", "--reference", "bagtricks_random"])
    assert references[-1] == "bagtricks_random" and "against `bagtricks_random`" in open(
        os.path.join(out, "dpmhead_cnn_compare.md")).read()
    with pytest.raises(SystemExit, match="not an arm"):
        compare.main(["--spec", spec, "--output-dir", out, "--report-only", "--reference", "resnet"])
    with pytest.raises(SystemExit, match="not an arm"):
        compare.main(["--spec", spec, "--output-dir", out, "--arms", "resnet"])
    with pytest.raises(SystemExit, match="not a seed"):
        compare.main(["--spec", spec, "--output-dir", out, "--seeds", "7"])


def test_spt_statistics_average_the_logged_synthesis_after_the_first_quarter(tmp_path):
    import json
    run = tmp_path / "dpmpp" / "seed1"
    run.mkdir(parents=True)
    records = [{"iteration": it, "total_loss": 1.0, "spt_fraction": frac, "spt_transferred_fraction": 0.7,
                "spt_covered_fraction": 0.2, "spt_mean_oiou": 0.9} for it, frac in ((0, 0.0), (20, 0.4), (40, 0.6))]
    run.joinpath("metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    stats = E.spt_statistics(str(run))
    assert stats["spt_fraction"] == pytest.approx(0.5) and stats["spt_mean_oiou"] == pytest.approx(0.9)
    assert E.spt_statistics(str(tmp_path / "none")) is None
    exp = E.Experiment(arms=[E.Arm("dpmpp", "c.yml"), E.Arm("baseline", "c.yml")], seeds=[1], training="occluded",
                       root=str(tmp_path), benchmark_dir=str(tmp_path), stage_config="c.yml")
    table = E.spt_statistics_markdown(exp)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if "dpmpp" in line]
    assert rows == [["dpmpp", "1", "50.0 ± 0.0", "70.0 ± 0.0", "20.0 ± 0.0", "90.0 ± 0.0"]] and "baseline" not in table
