"""The Python API (serve/api.py): the same rows as /v1/classify and osr-score for the same files,
whatever form an image arrives in (path, bytes, PIL image, numpy array), and the README example."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from osr.serve import load_model
from osr.serve.api import Model
from osr.serve.app import create_app
from osr.serve.card import model_card
from osr.serve.score_cli import main as score_main
from osr.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(tiny_model_repository: Path) -> Model:
    with load_model(tiny_model_repository) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real samples, images of unusual modes and one file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    rgba = np.concatenate([rng.integers(0, 256, (20, 30, 3)), rng.integers(0, 256, (20, 30, 1))], axis=2)
    made = {
        "noise.png": encode(Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba.astype(np.uint8), "RGBA"), "PNG"),
        "grey16.png": encode(Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50 % 65536).astype(np.uint16)),
                             "PNG"),
        "broken.jpg": b"\xff\xd8 not a jpeg",
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    for sample in ("airplane.jpg", "cat.jpg", "ship.jpg"):
        (folder / sample).write_bytes((ROOT / "samples" / sample).read_bytes())
    return sorted(folder.iterdir())


def service_rows(repository: Path, files: list[Path], top_k: int = 5) -> list[dict]:
    with TestClient(create_app(Settings(model_repository=repository))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        upload = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
        response = client.post("/v1/classify", files=upload, params={"top_k": top_k})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_rows_equal_the_services_rows(model: Model, tiny_model_repository: Path, files: list[Path]) -> None:
    expected = service_rows(tiny_model_repository, files, top_k=2)
    assert model.classify(files, names=[p.name for p in files], top_k=2) == expected
    assert [row["status"] for row in expected].count("error") == 1  # broken.jpg, an error row in both


def test_rows_equal_osr_scores_rows(model: Model, tiny_model_repository: Path, files: list[Path],
                                    tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    code = score_main([*map(str, files), "--model-repository", str(tiny_model_repository), "--out", str(out)])
    assert code == 3  # broken.jpg
    cli = [json.loads(line) for line in out.read_text().splitlines()]
    assert model.classify([str(p) for p in files]) == cli  # the path as given, like osr-score


def test_every_input_form_gives_the_same_row(model: Model, files: list[Path]) -> None:
    for path in files:
        if path.name == "broken.jpg":
            continue
        data = path.read_bytes()
        with Image.open(path) as image:
            image.load()
            forms = [path, str(path), data, bytearray(data), image]
            if image.mode in ("RGB", "RGBA", "I;16", "L"):
                forms.append(np.asarray(image))
            rows = model.classify(forms, names=["x"] * len(forms))
        assert all(row == rows[0] for row in rows), (path.name, [r["p_value"] for r in rows])
        assert rows[0]["status"] == "ok"


def test_default_names_and_a_single_input(model: Model, files: list[Path]) -> None:
    airplane = next(p for p in files if p.name == "airplane.jpg")
    image = Image.open(airplane)
    rows = model.classify([str(airplane), airplane.read_bytes(), image, np.asarray(image)])
    assert [row["path"] for row in rows] == [str(airplane), "bytes[1]", str(airplane), "array[3]"]
    assert model.classify(str(airplane)) == rows[:1]  # one input, not its characters
    assert len(model.classify(np.stack([np.asarray(image)] * 3))) == 3  # a 4-D array is a batch


def test_bad_inputs_are_error_rows_and_wrong_types_raise(model: Model, tmp_path: Path) -> None:
    rows = model.classify([b"", str(tmp_path / "missing.jpg"), np.zeros((8, 8, 3), np.float32),
                           np.zeros((8, 8, 5), np.uint8), np.full((8, 8, 3), 90, np.uint8)])
    assert [row["status"] for row in rows] == ["error", "error", "error", "error", "ok"]
    assert rows[0]["error"] == "empty file (0 bytes)"
    assert rows[1]["error"].startswith("cannot read file: ")
    assert rows[2]["error"] == "expected uint8 pixels (or uint16 grey), got float32"
    assert rows[3]["error"] == "expected an HxW, HxWx3 or HxWx4 array, got shape [8, 8, 5]"
    with pytest.raises(TypeError, match="cannot classify a int"):
        model.classify([3])
    with pytest.raises(ValueError, match="2 images but 1 names"):
        model.classify([b"", b""], names=["a"])


def test_card_and_summary(model: Model, files: list[Path]) -> None:
    assert model.card == model_card(model.predictor.manifest)
    assert (model.name, model.version, model.classes) == ("tiny", 1, ["cat", "dog", "ship"])
    summary = model.summarize(model.classify(files))
    assert summary.images == len(files) - 1 and summary.uniformity_set == "accepted"


def test_importing_osr_serve_stays_cheap() -> None:
    code = ("import sys, osr.serve; assert 'osr.serve.api' not in sys.modules and 'PIL' not in sys.modules; "
            "from osr.serve import load_model, Model; assert 'osr.serve.api' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_readme_example_runs() -> None:
    """The first ```python block of the README's "Python API" section, run from the repository root."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OSR_MODEL_REPOSITORY": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    default = (ROOT / "model_repository" / "DEFAULT_MODEL").read_text().strip()
    assert "airplane.jpg" in proc.stdout and f"Model({default!r}" in proc.stdout
