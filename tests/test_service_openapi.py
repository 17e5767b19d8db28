"""The service and its OpenAPI schema agree: schemathesis (an OpenAPI fuzzer) runs every check it
has (`--checks all`) against a live osr-serve, in the run the docs give (bench/openapi_fuzz.py),
with fewer examples per operation so it stays short. Plus what a reader of /docs relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from osr.serve.app import create_app
from osr.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "schemathesis.toml"


@pytest.fixture(scope="module")
def schema(tiny_model_repository: Path) -> dict:
    with TestClient(create_app(Settings(model_repository=tiny_model_repository))) as client:
        return client.get("/openapi.json").json()


def test_schemathesis_finds_no_disagreement(tiny_model_repository: Path, serve_app, tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is in the dev extra"
    app = create_app(Settings(model_repository=tiny_model_repository))
    with serve_app(app) as url:
        proc = subprocess.run(
            [schemathesis, "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json",
             "--checks", "all", "--max-examples", "8", "--seed", "1", "--workers", "1",
             "--generation-database", "none", "--request-timeout", "20"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert " passed" in output and "failures" not in output.split("SUMMARY")[-1].lower(), output[-3000:]


def test_every_operation_documents_its_error_codes_with_a_body(schema: dict) -> None:
    expected = {
        ("/v1/classify", "post"): {"200", "401", "408", "413", "415", "422", "503"},
        ("/v1/model", "get"): {"200", "401", "503"},
        ("/readyz", "get"): {"200", "503"},
        ("/v2/health/ready", "get"): {"200", "503"},
        ("/v2/models/{model_name}", "get"): {"200", "401", "404", "503"},
        ("/v2/models/{model_name}/infer", "post"): {"200", "400", "401", "404", "408", "413", "503"},
        ("/v2/models/{model_name}/versions/{model_version}/infer", "post"): {"200", "400", "401", "404", "408", "413",
                                                                              "503"},
    }
    for (path, method), codes in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert set(responses) == codes, (path, sorted(responses))
        body = "OipErrorBody" if path.startswith("/v2") else "ErrorDetail"
        for code in codes - {"200"}:
            assert responses[code]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{body}"}
    assert "HTTPValidationError" not in str(schema)  # FastAPI's list-of-errors 422, which is never sent
    assert schema["components"]["schemas"]["ErrorDetail"]["properties"]["detail"]["type"] == "string"


def test_result_fields_are_described(schema: dict) -> None:
    row = schema["components"]["schemas"]["ResultRow"]["properties"]
    for name in ("class_index", "class_name", "score", "p_value", "unknown", "top_k", "status", "error"):
        assert len(row[name].get("description", "")) > 20, name
    assert "-1" in row["class_index"]["description"] and "conformal" in row["p_value"]["description"].lower()


def test_metrics_is_documented_as_text(schema: dict) -> None:
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


def test_classify_needs_at_least_one_file(schema: dict) -> None:
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["minItems"] == 1 and body["required"] == ["files"]


def test_the_schema_forbids_what_the_service_refuses(schema: dict, tiny_model_repository: Path) -> None:
    """Issue 20: schemathesis' positive-data check found an empty file part (415) and an OIP input
    named "" (400) that the schema allowed. Both are now schema-invalid, and still refused."""
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"]["minLength"] == 1
    assert schema["components"]["schemas"]["RequestInput"]["properties"]["name"]["minLength"] == 1
    with TestClient(create_app(Settings(model_repository=tiny_model_repository))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        empty = client.post("/v1/classify", files=[("files", ("a.jpg", b"", "image/jpeg"))])
        assert empty.status_code == 415 and empty.json()["detail"].endswith("a.jpg: empty file (0 bytes)")
        unnamed = client.post("/v2/models/tiny/infer", json={"inputs": [
            {"name": "", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]})
        assert unnamed.status_code == 400 and "inputs.0.name" in unnamed.json()["error"]


def test_the_schemathesis_run_keeps_the_positive_data_check() -> None:
    """--checks all includes positive_data_acceptance; the config only adds the two statuses that
    depend on what the bytes are (not an image; another tensor than the model's), nothing else."""
    import tomllib

    config = tomllib.loads(CONFIG.read_text())
    for operation in config["operations"]:
        checks = operation["checks"]
        assert set(checks) == {"positive_data_acceptance"}
        extra = set(checks["positive_data_acceptance"]["expected-statuses"]) - {"2xx", "3xx", "401", "403", "404",
                                                                                 "409", "429"}
        assert extra in ({"415"}, {"400"}), extra
