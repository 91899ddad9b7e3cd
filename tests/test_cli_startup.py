"""The `convnext` command starts without importing torch, and its own commands report bad input in one line."""
import subprocess
import sys

import pytest

from convnext.cli import _COMMANDS, main


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_parser_and_package_import_without_torch():
    # `convnext --help` builds this parser; torch (seconds to import) must not come with it.
    code = ("import sys, convnext, convnext.cli, convnext.bench, convnext.roadmap; convnext.cli.build_parser(); "
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert _fresh_python(code) == "False False"
    # the public names still resolve, importing torch on first use
    assert _fresh_python("import sys, convnext; m = convnext.count_params; print('torch' in sys.modules)") == "True"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_line) in _COMMANDS.items():
        assert f"{name} " in out and help_line.split()[0] in out


def test_subcommand_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--mode" in capsys.readouterr().out


@pytest.mark.parametrize("size", ["0", "-3"])
def test_flops_bad_size_is_one_line(size, capsys):
    assert main(["flops", "convnext_atto", "--img-size", size]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convnext flops: error: --img-size {size}:") and err.count("\n") == 1


def test_flops_any_size(capsys):
    assert main(["flops", "convnext_atto", "--img-size", "225"]) == 0
    assert "convnext_atto @ 225x225" in capsys.readouterr().out


def test_models_default_and_filtered(capsys):
    assert main(["models", "convnext_atto"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("convnext_atto "))
    assert row.split()[1:5] == ["classification", "3.70", "0.55", "224x224"]
    assert main(["models", "roadmap_r50_baseline"]) == 0  # a pattern lists roadmap steps too
    assert "roadmap_r50_baseline" in capsys.readouterr().out
    assert main(["models", "no_such_*"]) == 2
    assert "no registered model matches 'no_such_*'" in capsys.readouterr().err


def test_models_default_leaves_out_slow_groups(monkeypatch, capsys):
    import convnext.cli as cli
    from convnext.models import get_spec, list_models

    names, left_out = cli._shown_models(None, None)
    assert "convnext_tiny" in names and not any(n.startswith("roadmap_") for n in names)
    assert sorted(names) == sorted(n for n in list_models() if get_spec(n).task == "classification"
                                   and not n.startswith("roadmap_"))
    assert left_out == ["roadmap", "detection", "segmentation"]
    assert cli._shown_models("roadmap_r50_*", "segmentation")[0] == []


def test_models_table_builds_no_model_and_imports_no_dense_module():
    code = ("import sys\nimport convnext.models.registry as r\nbuilt = []\norig = r.build_model\n"
            "r.build_model = lambda c: built.append(c) or orig(c)\nfrom convnext.cli import main\n"
            "main(['models'])\nprint(len(built), any(k.startswith('convnext.dense') for k in sys.modules))")
    assert _fresh_python(code).splitlines()[-1] == "0 False"
