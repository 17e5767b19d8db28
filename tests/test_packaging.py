"""The wheel holds one top-level package, osr, with every module of train/, export/ and serve/."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_only_osr_and_every_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("osr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"osr"}
    expected = {"osr/__init__.py", "osr/images.py", "osr/train/osr_splits.json"}
    for src, pkg in (("train", "osr/train"), ("export", "osr/export"), ("serve", "osr/serve"),
                     ("serve/routes", "osr/serve/routes")):
        expected |= {f"{pkg}/{p.name}" for p in (ROOT / src).glob("*.py")}
    expected |= {f"osr/serve/static/{p.name}" for p in (ROOT / "serve" / "static").iterdir()}  # the demo page
    assert expected <= set(names), sorted(expected - set(names))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("osr-train", "osr-export", "osr-serve", "osr-score"):
        assert script in text

