"""Preflight (issue 10): a broken model repository is refused when it is loaded, with one line
that says what is wrong and how to fix it: osr-serve exits 2 before listening (never "ready but
broken", never "started but never ready"), and osr-score gets the same refusal from
Predictor.from_repository.

Every broken repository is made from the tiny fixture export (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from osr.export.manifest import REQUIRED_KEYS, THRESHOLD_KEYS, ManifestError
from osr.serve.predictor import Predictor, PredictorError
from osr.serve.server import main

ROOT = Path(__file__).resolve().parents[1]


# a repository that should have been refused must fail the test, not start serving
pytestmark = pytest.mark.usefixtures("never_serve")


def version_dir(repository: Path) -> Path:
    return repository / "tiny" / "1"


def edit_manifest(repository: Path, **changes: object) -> None:
    path = version_dir(repository) / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            manifest[outer][inner] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))  # allow_nan: NaN is written as the literal NaN


def rehash(repository: Path, model_file: Path | None = None) -> None:
    """Make the manifest's sha256 match the (changed) model file, as a careless edit would."""
    model_file = model_file or version_dir(repository) / "model.onnx"
    edit_manifest(repository, sha256=hashlib.sha256(model_file.read_bytes()).hexdigest())


def text_model(repository: Path) -> None:
    (version_dir(repository) / "model.onnx").write_text("this is a text file, not an ONNX model\n")
    rehash(repository)


def model_file_outside(repository: Path, absolute: bool) -> None:
    outside = repository.parent / "outside.onnx"
    shutil.copy(version_dir(repository) / "model.onnx", outside)
    edit_manifest(repository, model_file=str(outside) if absolute else "../../../outside.onnx")


def graph_without_p_value(repository: Path) -> None:
    import onnx

    path = version_dir(repository) / "model.onnx"
    model = onnx.load(str(path))
    [p_value] = [output for output in model.graph.output if output.name == "p_value"]
    model.graph.output.remove(p_value)
    onnx.save(model, str(path))
    rehash(repository)


def label_output_as_float(repository: Path) -> None:
    manifest = json.loads((version_dir(repository) / "manifest.json").read_text())
    outputs = manifest["outputs"]
    outputs[2] = {**outputs[2], "dtype": "float32"}
    edit_manifest(repository, outputs=outputs)


THRESHOLD = "0.000106275"  # the tiny fixture's threshold as the graph holds it (float32, %g)
RE_EXPORT = "re-export the model with osr-export"

# name -> (how to break a copy of the tiny repository, the one-line message)
BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "fewer_classes_than_logits": (
        lambda r: edit_manifest(r, classes=["cat", "dog"]),
        "{v}/model.onnx: the graph has 3 logits but the manifest lists 2 classes; " + RE_EXPORT),
    "more_classes_than_logits": (
        lambda r: edit_manifest(r, classes=["cat", "dog", "ship", "frog"]),
        "{v}/model.onnx: the graph has 3 logits but the manifest lists 4 classes; " + RE_EXPORT),
    "text_model_with_matching_hash": (
        text_model, "{v}/model.onnx is not an ONNX model"),
    "non_numeric_threshold": (
        lambda r: edit_manifest(r, **{"threshold.value": "high"}),
        "{v}/manifest.json: threshold.value must be a finite number, got 'high'; " + RE_EXPORT),
    "nan_threshold": (
        lambda r: edit_manifest(r, **{"threshold.value": math.nan}),
        "{v}/manifest.json: threshold.value must be a finite number, got nan; " + RE_EXPORT),
    "threshold_differs_from_graph": (
        lambda r: edit_manifest(r, **{"threshold.value": 0.5}),
        "{v}/model.onnx: the manifest's threshold 0.5 is not the graph's " + THRESHOLD + "; the graph decides "
        "'unknown', so " + RE_EXPORT + " rather than edit manifest.json"),
    "per_class_thresholds_of_wrong_length": (
        lambda r: edit_manifest(r, **{"threshold.per_class": [0.1, 0.2]}),
        "{v}/manifest.json: threshold.per_class has 2 values for 3 classes; " + RE_EXPORT),
    "image_size_zero": (
        lambda r: edit_manifest(r, image_size=0),
        "{v}/manifest.json: image_size must be a positive integer, got 0; " + RE_EXPORT),
    "image_size_text": (
        lambda r: edit_manifest(r, image_size="32"),
        "{v}/manifest.json: image_size must be a positive integer, got '32'; " + RE_EXPORT),
    "image_size_differs_from_graph": (
        lambda r: edit_manifest(r, image_size=16),
        "{v}/model.onnx: the graph takes 32 x 32 images but the manifest says image_size 16; " + RE_EXPORT),
    "version_differs_from_folder": (
        lambda r: edit_manifest(r, version=7),
        "{v}/manifest.json: the manifest says version 7 but its folder is 1; move the files to a folder named "
        "7 or set version to 1"),
    "version_not_an_integer": (
        lambda r: edit_manifest(r, version="1"),
        "{v}/manifest.json: version must be a positive integer, got '1'; " + RE_EXPORT),
    "name_differs_from_folder": (
        lambda r: edit_manifest(r, name="other"),
        "{v}/manifest.json: the manifest names the model 'other' but its folder is 'tiny'; clients find a model "
        "by its folder, so rename the folder to 'other' or set name to 'tiny'"),
    "model_file_outside_the_folder": (
        lambda r: model_file_outside(r, absolute=False),
        "{v}/manifest.json: model_file '../../../outside.onnx' must be a file name inside {v} (no folders, "
        "no '..'); " + RE_EXPORT),
    "manifest_tensor_differs_from_graph": (
        label_output_as_float,
        "{v}/model.onnx: manifest output 'label' is float32 [-1], the graph's is int64 [-1]; " + RE_EXPORT),
    "graph_without_an_output": (
        graph_without_p_value,
        "{v}/model.onnx: the graph has no output 'p_value' (it has logits, score, label); " + RE_EXPORT),
    "resize_not_an_object": (
        lambda r: edit_manifest(r, resize="bilinear"),
        "{v}/manifest.json: resize must be an object with a 'rule', got 'bilinear'; " + RE_EXPORT),
    "outputs_not_tensors": (
        lambda r: edit_manifest(r, outputs=["logits", "score"]),
        "{v}/manifest.json: outputs must be a list of tensors, each with a name, a dtype and a shape of integers; "
        + RE_EXPORT),
    "no_classes": (
        lambda r: edit_manifest(r, classes=[]),
        "{v}/manifest.json: classes must be a non-empty list of names; " + RE_EXPORT),
}


@pytest.fixture
def repository_copy(tiny_model_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repository"
    shutil.copytree(tiny_model_repository, copy)
    return copy


def expected(name: str, repository: Path) -> str:
    return BROKEN[name][1].format(v=version_dir(repository))


@pytest.mark.parametrize("name", BROKEN)
def test_broken_repository_is_refused_at_load(repository_copy: Path, name: str) -> None:
    BROKEN[name][0](repository_copy)
    with pytest.raises((ManifestError, PredictorError)) as info:
        Predictor.from_repository(repository_copy)
    message = str(info.value)
    assert "\n" not in message
    if name == "text_model_with_matching_hash":
        assert message.startswith(expected(name, repository_copy) + " (") and message.endswith(RE_EXPORT)
    else:
        assert message == expected(name, repository_copy)


@pytest.mark.parametrize("name", ["fewer_classes_than_logits", "text_model_with_matching_hash", "nan_threshold",
                                  "version_differs_from_folder", "model_file_outside_the_folder"])
def test_osr_serve_exits_2_with_one_line(capsys, repository_copy: Path, name: str) -> None:
    BROKEN[name][0](repository_copy)
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(repository_copy)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("osr-serve: cannot serve: ") and err.count("\n") == 1, err
    if name != "text_model_with_matching_hash":
        assert err == f"osr-serve: cannot serve: {expected(name, repository_copy)}\n"


def remove_field(repository: Path, field: str) -> None:
    path = version_dir(repository) / "manifest.json"
    manifest = json.loads(path.read_text())
    *outer, leaf = field.split(".")
    (manifest[outer[0]] if outer else manifest).pop(leaf)
    path.write_text(json.dumps(manifest))


# every field the server reads: the manifest's required fields and the threshold record's
READ_FIELDS = [*REQUIRED_KEYS, *(f"threshold.{key}" for key in THRESHOLD_KEYS)]


@pytest.mark.parametrize("field", READ_FIELDS)
def test_manifest_missing_a_field_the_server_reads_exits_2_at_preflight(capsys, repository_copy: Path,
                                                                        field: str) -> None:
    """Refused at load with one line naming the field, never a KeyError later (the model card, the
    monitor: /readyz 503 for good)."""
    remove_field(repository_copy, field)
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(repository_copy)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"osr-serve: cannot serve: {version_dir(repository_copy) / 'manifest.json'}: ")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    leaf = field.split(".")[-1]
    assert (field if leaf != "value" else "'value'") in err, err


def test_absolute_model_file_is_refused(repository_copy: Path) -> None:
    model_file_outside(repository_copy, absolute=True)
    with pytest.raises(ManifestError, match="must be a file name inside"):
        Predictor.from_repository(repository_copy)


def test_model_file_outside_is_refused_before_it_is_read(repository_copy: Path) -> None:
    """The path is checked before the sha256 is computed: a manifest cannot make the server read
    (or block on) any file it names."""
    os.mkfifo(repository_copy.parent / "fifo")
    edit_manifest(repository_copy, model_file="../../../fifo")
    with pytest.raises(ManifestError, match="must be a file name inside"):
        Predictor.from_repository(repository_copy)


def test_real_process_exits_2_without_a_traceback(repository_copy: Path) -> None:
    BROKEN["fewer_classes_than_logits"][0](repository_copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSR_")}
    result = subprocess.run([sys.executable, "-m", "osr.serve.server", "--model-repository", str(repository_copy),
                             "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"osr-serve: cannot serve: {expected('fewer_classes_than_logits', repository_copy)}\n"
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("model", ["cifar10-lite0", "cifar10-ad", "cifar10-ad-int8"])
def test_bundled_models_pass_preflight(model: str) -> None:
    repository = ROOT / "model_repository"
    if not (repository / model).is_dir():
        pytest.skip(f"{model} is not in this checkout's model_repository/")
    with Predictor.from_repository(repository, model, threads=1) as predictor:
        assert predictor.name == model


def test_tiny_fixture_passes_preflight(tiny_model_repository: Path) -> None:
    with Predictor.from_repository(tiny_model_repository, threads=1) as predictor:
        assert (predictor.name, predictor.version, len(predictor.classes)) == ("tiny", 1, 3)


def test_test_batch_outputs_are_checked_against_the_contract() -> None:
    import numpy as np

    from osr.serve import preflight

    good = {"logits": np.zeros((2, 3), np.float32), "score": np.zeros(2, np.float32),
            "label": np.array([-1, 2]), "p_value": np.ones(2, np.float32)}
    preflight.check_outputs(good, 2, 3, "tiny version 1")
    for change, message in [
        ({"logits": np.zeros((2, 4), np.float32)}, "'logits' of shape [2, 4], the contract is [2, 3]"),
        ({"label": np.zeros(2, np.float32)}, "'label' as float32, the contract is int64"),
        ({"label": np.array([0, 3])}, "labels outside -1..2"),
    ]:
        with pytest.raises(ManifestError) as info:
            preflight.check_outputs({**good, **change}, 2, 3, "tiny version 1")
        assert str(info.value) == (f"tiny version 1: a test batch {'of 2 ' if 'shape' in message else ''}gave "
                                   f"{message}; {RE_EXPORT}")
    with pytest.raises(ManifestError, match="gave no output 'p_value'"):
        preflight.check_outputs({k: v for k, v in good.items() if k != "p_value"}, 2, 3, "tiny version 1")
