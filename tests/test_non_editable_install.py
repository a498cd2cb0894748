"""The runners from a regular (non-editable) install: the package is installed with pip into a folder of its own
(no tools/ or configs/ next to it) and used from outside the repository. The pipeline and the ablation find the
repository's tools/ and configs/ when passed in (argument or environment variable) and say what to do when not.
No training: the stage run uses a stand-in script."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from _tiny import REPO


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``pip install --no-deps --target <site> <copy of the package sources>`` (a copy, so the build leaves nothing
    in the repository)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(os.path.join(REPO, "fastreid_dpmpp"), source / "fastreid_dpmpp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    target = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (target / "fastreid_dpmpp" / "resources.py").is_file()
    return target


def run_installed(site, code, cwd, env=None):
    """Run ``code`` with the installed copy first on the path, from ``cwd`` (outside the repository); returns the
    JSON object the code prints on its last line."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FASTREID_DPMPP_")}
    environment.update(PYTHONPATH=str(site), **(env or {}))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                            env=environment, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


PIPELINE = """
    import json, os
    import fastreid_dpmpp
    from fastreid_dpmpp import resources
    from fastreid_dpmpp.engine.pipeline import plan_stages
    config = os.path.join(%(repo)r, "configs", "Synthetic", "dpmpp.yml")
    out = {"package": fastreid_dpmpp.__file__, "checkout": resources.checkout_dir()}
    stages = plan_stages(config, "out")
    try:
        stages[0].script_path
    except resources.ResourceNotFoundError as e:
        out["error"] = str(e)
    out["given"] = [s.script_path for s in plan_stages(config, "out", tools_dir=os.path.join(%(repo)r, "tools"))]
    print(json.dumps(out))
"""


def test_pipeline_finds_tools_only_when_given_outside_a_checkout(site, tmp_path):
    out = run_installed(site, PIPELINE % {"repo": REPO}, cwd=tmp_path)
    assert out["package"].startswith(str(site)) and out["checkout"] is None
    assert "FASTREID_DPMPP_TOOLS" in out["error"] and "tools_dir" in out["error"]
    assert out["given"] == [os.path.join(REPO, "tools", s) for s in ("train_stage1.py", "train_stage2.py",
                                                                     "train_net.py")]
    by_variable = run_installed(site, PIPELINE % {"repo": REPO}, cwd=tmp_path,
                                env={"FASTREID_DPMPP_TOOLS": os.path.join(REPO, "tools")})
    assert "error" not in by_variable


def test_a_stage_runs_from_the_installed_package(site, tmp_path):
    """run_stage starts the script of the given tools folder and checks its artifact, from the installed copy."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "train_stage1.py").write_text(textwrap.dedent("""
        import os, sys
        out = sys.argv[sys.argv.index("OUTPUT_DIR") + 1]
        print("eta: 0:00:00  epoch/iter: 0/1  total_loss: 1.0")
        open(os.path.join(out, "text_prototypes.pth"), "w").write("T")
    """))
    code = """
        import json, os
        from fastreid_dpmpp.engine.pipeline import plan_stages, run_stage
        config = os.path.join(%(repo)r, "configs", "Synthetic", "dpmpp.yml")
        stage = plan_stages(config, "out", ["STAGE1.MAX_EPOCH", "1"], tools_dir=%(tools)r)[0]
        run_stage(stage, "stage.log", show_progress=False)
        print(json.dumps({"done": stage.done(), "script": stage.script_path}))
    """ % {"repo": REPO, "tools": str(tools)}
    out = run_installed(site, code, cwd=tmp_path)
    assert out == {"done": True, "script": str(tools / "train_stage1.py")}


def test_ablation_reads_row_configs_passed_in(site, tmp_path):
    code = """
        import json, os
        from fastreid_dpmpp import resources
        from fastreid_dpmpp.engine import ablation
        out = {"default": ablation.CONFIG_DIR}
        runs = ablation.plan_runs(["III"], [0], config_dir=os.path.join(%(repo)r, "configs"))
        out["files"] = [r.config_file for r in runs]
        out["labels"] = [r.config_label for r in runs]
        try:
            ablation.plan_runs(["III"], [0])[0].config_file
        except resources.ResourceNotFoundError as e:
            out["error"] = str(e)
        print(json.dumps(out))
    """ % {"repo": REPO}
    out = run_installed(site, code, cwd=tmp_path)
    assert out["default"] is None and "FASTREID_DPMPP_CONFIGS" in out["error"]
    assert out["files"] and all(os.path.isfile(f) for f in out["files"])
    assert all(f.startswith(os.path.join(REPO, "configs", "Synthetic", "ablation")) for f in out["files"])
    assert out["labels"] == [os.path.relpath(f, REPO) for f in out["files"]]
