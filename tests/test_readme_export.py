"""The README's export line, run as a user of a fresh clone would, leaves the bundled model alone.

The line is read out of README.md (section "2. Export"), its optional `[...]` flags dropped, and
run in a folder laid out like a clone: `model_repository/` (a copy of the bundled one) and
`runs/ad/checkpoint.pt` (a tiny real checkpoint). Both the copy and the real bundled
`model_repository/` must be byte-identical afterwards, and the export must have gone somewhere.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osr.export import cli
from osr.train.checkpoint import SCHEMA
from osr.train.data import open_set_from_config
from osr.train.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def readme_export_line() -> list[str]:
    """argv of the `osr-export ...` line in the README's export section, optional flags dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## 2. Export") :]
    line = next(line for line in section.splitlines() if line.startswith("osr-export "))
    line = re.sub(r"\[[^\]]*\]", "", line.split("#")[0])
    return shlex.split(line)[1:]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_checkpoint(data_root: Path, path: Path) -> None:
    """A random-weights classifier32 trained on nothing, over a 2-class ImageFolder tree with
    20 calibration images (enough for the README's alpha 0.05)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 50), ("test", 4)):
        for label in ("dark", "light"):
            folder = data_root / split / label
            folder.mkdir(parents=True)
            for i in range(count):  # noise: varied scores, no ties at the threshold
                Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = {
        "dataset": "imagefolder", "split": 0, "data_root": str(data_root), "image_size": 32,
        "calib_fraction": 0.2, "split_seed": 0, "max_train_per_class": None, "max_test_per_class": None,
        "method": "ce", "mix": "none", "seed": 0,
    }
    data = open_set_from_config(config)
    torch.manual_seed(0)
    model_args = {"arch": "classifier32", "num_classes": 2, "width": 0.125}
    model = build_model(**model_args)
    with torch.no_grad():  # untrained logits are ~1e-5: scale them up so scores do not tie at the threshold
        model.fc.weight.mul_(1e4)
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "schema": SCHEMA, "model": model.state_dict(), "model_args": model_args,
            "classes": data.classes, "image_size": 32,
            "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "config": config,
            "metrics": {}, "calibration_indices": [int(i) for i in data.calib_indices], "epoch": 1,
            "run_id": "ad", "git_commit": None, "teacher": None,
        },
        path,
    )


def test_readme_export_line_leaves_the_bundled_model_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = readme_export_line()
    assert argv and not argv[0].startswith("-"), argv
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "model_repository", clone / "model_repository")
    tiny_checkpoint(tmp_path / "data", clone / argv[0] / "checkpoint.pt")
    bundled, copy = tree_digest(ROOT / "model_repository"), tree_digest(clone / "model_repository")
    assert bundled == copy and any(name.endswith("model.onnx") for name in copy)

    monkeypatch.chdir(clone)
    assert cli.main(argv + ["--no-report"]) == 0
    written = (clone / capsys.readouterr().out.strip().splitlines()[-1]).resolve()

    assert (written / "model.onnx").is_file()
    assert (clone / "model_repository") not in written.parents
    assert tree_digest(clone / "model_repository") == copy
    assert tree_digest(ROOT / "model_repository") == bundled


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_serve_passes_model_and_repository_only_when_set(tmp_path: Path) -> None:
    import subprocess

    def serve_line(*assignments: str) -> str:
        # -n: print the commands without running them; a fresh VENV makes the output not depend on .venv
        out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "serve",
                              f"VENV={tmp_path / 'venv'}", *assignments],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]

    assert serve_line("MODEL=my-model", "REPOSITORY=exports").endswith(
        "osr-serve --host 127.0.0.1 --port 8000 --model-repository exports --model my-model")
    assert "--model" not in serve_line() and "--model-repository" not in serve_line("MODEL=m")
    assert serve_line("MODEL=m").endswith("--model m")
