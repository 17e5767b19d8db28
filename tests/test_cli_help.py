"""--help of every command: each flag shows its real default; osr-train answers without torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

from osr.train import choices


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; it prints the heavy modules that got imported, last."""
    probe = textwrap.dedent(code) + textwrap.dedent("""
        import sys
        print("IMPORTED", sorted(m for m in ("torch", "torchvision", "numpy", "PIL") if m in sys.modules))
    """)
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module,command", [("osr.train.cli", "osr-train"), ("osr.export.cli", "osr-export")])
def test_help_imports_no_torch(module: str, command: str) -> None:
    result = _run_without_torch(f"""
        import runpy, sys
        sys.argv = ["{command}", "--help"]
        try:
            runpy.run_module("{module}", run_name="__main__")  # = python -m {module} --help
        except SystemExit as exit:
            assert exit.code == 0, exit.code
    """)
    assert result.returncode == 0, result.stderr
    a_flag = {"osr-train": "--skip-bad-images", "osr-export": "--max-batch-size"}[command]
    assert f"usage: {command}" in result.stdout and a_flag in result.stdout
    imported = result.stdout.strip().splitlines()[-1]
    assert "torch" not in imported, imported


def test_osr_train_argument_errors_come_before_torch() -> None:
    result = _run_without_torch("""
        from osr.train.cli import main
        assert main(["--method", "ad"]) == 2
    """)
    assert result.returncode == 0, result.stderr
    assert "osr-train: error: method ad needs --teacher" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []"


def test_the_choices_agree_with_what_implements_them() -> None:
    from osr.export.graph import SCORE_FUNCTIONS
    from osr.train import data, metrics, models, pretrained

    assert models.ARCHS == choices.ARCHS and models.SCRATCH_ARCHS == choices.SCRATCH_ARCHS
    assert tuple(pretrained.PRETRAINED_ARCHS) == choices.PRETRAINED_ARCH_NAMES
    assert metrics.SCORES == choices.SCORES and tuple(SCORE_FUNCTIONS) == choices.EXPORT_SCORES
    assert data.DATASETS == choices.DATASETS and set(choices.DEFAULT_IMAGE_SIZE) == set(choices.DATASETS)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from osr.export.cli import build_parser as export_parser
    from osr.serve.score_cli import build_parser as score_parser
    from osr.serve.server import build_parser as serve_parser
    from osr.train.config import build_parser as train_parser

    return {"osr-train": train_parser(), "osr-export": export_parser(), "osr-score": score_parser(),
            "osr-serve": serve_parser()}


@pytest.mark.parametrize("command", ["osr-train", "osr-export", "osr-score", "osr-serve"])
def test_every_flag_shows_its_default(command: str) -> None:
    parser = _parsers()[command]
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.required or action.nargs == 0:
            continue  # positionals, required flags, on/off switches (off unless given)
        text = formatter._expand_help(action) if action.help else ""
        if "default" not in text.lower():
            missing.append(action.option_strings[-1])
    assert missing == [], f"{command}: no default in the help of {missing}"


def test_osr_train_help_says_what_kd_and_ad_really_use() -> None:
    from osr.train.config import TrainConfig, build_parser

    text = " ".join(build_parser().format_help().split())
    assert "(default: none; cutmix for kd/ad)" in text and "(default: 32; 64 for tiny_imagenet)" in text
    assert "(default: None)" not in text
    assert TrainConfig(method="kd", teacher="t").mix == TrainConfig(method="ad", teacher="t").mix == "cutmix"
    assert TrainConfig().mix == "none"
