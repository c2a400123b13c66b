"""The package layout and the CLI's exit-code contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from priorscope.cli.main import main
from priorscope.engine.conditions import (
    build_conditions,
    parse_condition,
    parse_layers,
    parse_reductions,
)
from priorscope.engine.errors import UnknownNameError, UsageError

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> str:
    """Return the stdout of ``code`` run by a fresh interpreter in ``cwd``."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd
    )
    return out.stdout.strip()


def test_namespaces_import_and_bare_kernels_is_not_ours(tmp_path: Path) -> None:
    code = (
        "import importlib.util, priorscope.engine, priorscope.kernels, priorscope.cli\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print('none' if spec is None else spec.origin)\n"
    )
    origin = _python(code, tmp_path)
    assert origin == "none" or not origin.startswith(str(REPO))


def test_transformers_does_not_mistake_our_kernels_folder_for_its_hub_package() -> None:
    # Run from the repository root, where a bare 'kernels' folder sits on sys.path via cwd.
    code = "from transformers.utils.import_utils import is_kernels_available as f; print(f())"
    assert _python(code, REPO) == "False"


def test_engine_exports_what_a_researcher_types_and_imports_cheaply(tmp_path: Path) -> None:
    code = (
        "import sys, priorscope.engine\n"
        "assert 'torch' not in sys.modules and 'zarr' not in sys.modules\n"
        "from priorscope.engine.capture import CaptureConfig as C\n"  # the subpackage first
        "from priorscope.engine import open_store, capture, CaptureConfig, compute_decay, "
        "DecayConfig, export_grounded, write_report, load_model\n"
        "from priorscope.engine.capture.run import capture as real\n"
        "assert capture is real and CaptureConfig is C and callable(load_model)\n"
        "print('ok')\n"
    )
    assert _python(code, tmp_path) == "ok"


@pytest.mark.parametrize(
    ("config", "kwargs", "needle"),
    [
        ("DecayConfig", {"n_boot": 1}, r"n_boot \(--n-boot\)"),
        ("DecayConfig", {"by": "template"}, "--by"),
        ("GroundedConfig", {"clean_at": 2.0}, "clean_at"),
        ("ReportConfig", {"n_flipped": 99}, "n_flipped"),
        ("DemoConfig", {"seed": 7}, "held-out seed"),
    ],
)
def test_configs_validate_themselves_in_python(config: str, kwargs: dict, needle: str) -> None:
    import priorscope.engine as engine

    with pytest.raises(UsageError, match=needle):
        getattr(engine, config)(**kwargs)


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2
    assert main([]) == 2  # no command: usage shown, usage-error code


def test_cli_subprocess_usage_error_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "priorscope.cli", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No such command" in proc.stderr


def test_conditions_order_and_names() -> None:
    conds = build_conditions([0.04, 0.01], total=True, none=True)
    assert [c.name for c in conds] == ["clean", "blur@0.01", "blur@0.04", "total", "none"]
    for c in conds:
        assert parse_condition(c.name) == c or c.kind == "none"
    with pytest.raises(UsageError, match="blur@S"):
        parse_condition("blurry")
    with pytest.raises(UsageError, match="positive finite"):
        build_conditions([0.0])


def test_parse_layers_forms() -> None:
    assert parse_layers("all", 3) == [-1, 0, 1, 2]
    assert parse_layers("0,2", 3) == [0, 2]
    assert parse_layers("0:8:2", 8) == [0, 2, 4, 6]
    assert parse_layers("embed,1", 4) == [-1, 1]
    with pytest.raises(UsageError, match="between 0 and 2"):
        parse_layers("5", 3)
    with pytest.raises(UsageError, match="--layers"):
        parse_layers("x", 3)


def test_unknown_reduction_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'image_mean'"):
        parse_reductions("last,imagemean")
    assert parse_reductions("text_mean,last") == ["last", "text_mean"]
