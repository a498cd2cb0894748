"""Packaging: the plugin's import-time contract and the opt-in autoload hook."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, cwd, env=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_missing_fastreid_gives_install_instructions(tmp_path):
    code = """
    import sys
    class HideFastreid:
        def find_spec(self, name, path, target=None):
            if name == "fastreid" or name.startswith("fastreid."):
                raise ModuleNotFoundError("No module named 'fastreid'", name="fastreid")
    sys.meta_path.insert(0, HideFastreid())
    import fastreid_dpmpp
    """
    result = run_python(code, cwd=tmp_path)
    assert result.returncode != 0
    assert "pip install --no-deps fastreid==1.4.0" in result.stderr


def test_importing_only_fastreid_loads_the_plugin_when_opted_in(tmp_path):
    script = tmp_path / "uses_only_fastreid.py"
    script.write_text(textwrap.dedent("""
        from fastreid.config import get_cfg
        from fastreid.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
        cfg = get_cfg()
        print("keys", "VIT" in cfg.MODEL and "SPT" in cfg)
        print("registered", "build_clip_vit_backbone" in BACKBONE_REGISTRY._obj_map and "CLIPBaseline" in META_ARCH_REGISTRY._obj_map)
    """))
    opted_in = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              env=dict(os.environ, FASTREID_DPMPP_AUTOLOAD="1"), timeout=300)
    assert opted_in.returncode == 0, opted_in.stderr
    assert "keys True" in opted_in.stdout and "registered True" in opted_in.stdout
    env = {k: v for k, v in os.environ.items() if k != "FASTREID_DPMPP_AUTOLOAD"}
    default = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=300)
    assert "keys False" in default.stdout, default.stderr


def test_config_keys_and_idempotence():
    from fastreid.config import get_cfg
    from fastreid_dpmpp import add_dpmpp_config
    cfg = add_dpmpp_config(get_cfg())
    cfg.SPT.ALPHA = 0.5
    add_dpmpp_config(cfg)
    assert cfg.SPT.ALPHA == 0.5 and cfg.MODEL.LOSSES.MASK.S == 30.0 and cfg.STAGE2.RHO == 0.3
