"""osr-score and osr-serve give identical answers for the same image files (the bundled model
and the tiny one), because both run the one predictor and the decision is in the graph."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from osr.serve.app import create_app
from osr.serve.score_cli import main as score_main
from osr.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("status", "class_index", "class_name", "score", "p_value", "unknown", "top_k")


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate([(32, 32), (64, 48), (17, 90)]):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    for sample in sorted((ROOT / "samples").glob("*.jpg")):
        paths.append(folder / sample.name)
        paths[-1].write_bytes(sample.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return paths + [folder / "broken.jpg"]


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_cli_and_service_agree(which: str, tiny_model_repository: Path, tmp_path: Path) -> None:
    repository = tiny_model_repository if which == "tiny" else ROOT / "model_repository"
    paths = _images(tmp_path / "images")
    out = tmp_path / "scores.jsonl"
    code = score_main([str(tmp_path / "images"), "--model-repository", str(repository), "--out", str(out)])
    assert code == 3  # the broken file
    cli = {Path(row["path"]).name: row for row in map(json.loads, out.read_text().splitlines())}

    with TestClient(create_app(Settings(model_repository=repository))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        response = client.post("/v1/classify", files=files)
    assert response.status_code == 200
    service = {row["path"]: row for row in response.json()["results"]}

    assert set(cli) == set(service) == {p.name for p in paths}
    assert cli["broken.jpg"]["status"] == service["broken.jpg"]["status"] == "error"
    for name, row in service.items():
        assert {k: row[k] for k in FIELDS} == {k: cli[name][k] for k in FIELDS}, name
