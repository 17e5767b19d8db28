"""manifest.json next to each exported model: read, write, validate, and find versions.

Stdlib only: osr.serve imports this module and must not pull in torch or numpy.

Repository layout: <repository>/<name>/<version>/{model file, manifest.json}, versions are
positive integers and "newest" is the largest. Variant models (e.g. "<name>-int8",
"<name>-trt") carry "variant_of": "<name>" in their manifest, so a repository holding one model
plus its variants still resolves to that model when no name is given. A repository holding several
models names its default in a one-line text file DEFAULT_MODEL at its root (Triton ignores files
there: it loads only model folders).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from osr.atomic import write_text_atomic

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"
RESIZE_RULE = {"rule": "shorter_side_center_crop", "interpolation": "bilinear"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "score", "label", "p_value")
# Variants of model <name> are the models <name><suffix> of the same repository.
INT8_SUFFIX = "-int8"
TENSORRT_SUFFIX = "-trt"


def output_specs(num_classes: int) -> list[dict]:
    """The manifest's "outputs" entries of the decision graph (osr.export.graph)."""
    return [
        {"name": "logits", "dtype": "float32", "shape": [-1, num_classes]},
        {"name": "score", "dtype": "float32", "shape": [-1]},
        {"name": "label", "dtype": "int64", "shape": [-1]},
        {"name": "p_value", "dtype": "float32", "shape": [-1]},
    ]


def input_specs(image_size: int) -> list[dict]:
    """The manifest's "inputs" entry of the decision graph."""
    return [
        {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [-1, image_size, image_size, 3],
            "layout": "NHWC",
            "color": "RGB",
        }
    ]


REQUIRED_KEYS = (
    "schema_version",
    "name",
    "version",
    "model_file",
    "sha256",
    "classes",
    "image_size",
    "resize",
    "inputs",
    "outputs",
    "score_function",
    "threshold",
)


class ManifestError(ValueError):
    """A manifest or repository that cannot be served; the message says what is wrong."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_manifest(manifest: dict, where: str = "manifest") -> None:
    """Check the schema version and the presence of the required fields."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema_version is {found!r}, this osr reads schema_version {SCHEMA_VERSION}; "
            "re-export the model with this osr version"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    threshold = manifest["threshold"]
    if not isinstance(threshold, dict) or "value" not in threshold:
        raise ManifestError(f"{where}: field threshold must be an object with a 'value'")


def load_manifest(version_dir: Path) -> dict:
    """Read <version_dir>/manifest.json, check its schema version and the model file's sha256."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {version_dir}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error
    validate_manifest(manifest, where=str(path))
    model_path = version_dir / manifest["model_file"]
    if not model_path.is_file():
        raise ManifestError(f"{path}: model file {manifest['model_file']} is missing from {version_dir}")
    actual = sha256_file(model_path)
    if actual != manifest["sha256"]:
        raise ManifestError(
            f"{path}: sha256 mismatch for {manifest['model_file']}: manifest says {manifest['sha256']}, "
            f"file has {actual}; the model file was changed after export"
        )
    return manifest


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/Infinity; undefined metrics (e.g. AUROC without unknowns) become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_manifest(version_dir: Path, manifest: dict) -> None:
    """Validate and write <version_dir>/manifest.json atomically (temp file + rename)."""
    version_dir = Path(version_dir)
    validate_manifest(manifest, where=str(version_dir / MANIFEST_FILE))
    text = json.dumps(_finite_or_none(manifest), indent=2, allow_nan=False) + "\n"
    write_text_atomic(version_dir / MANIFEST_FILE, text)


def list_versions(model_dir: Path) -> list[int]:
    """Positive integer version folders of a model, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    versions = [
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0
    ]
    return sorted(versions)


def list_models(repository: Path) -> list[str]:
    """Names of the model folders (those with at least one version folder), sorted."""
    repository = Path(repository)
    if not repository.is_dir():
        raise ManifestError(f"model repository {repository} does not exist")
    return sorted(child.name for child in repository.iterdir() if child.is_dir() and list_versions(child))


def _is_variant(model_dir: Path) -> bool:
    versions = list_versions(model_dir)
    try:
        data = json.loads((model_dir / str(versions[-1]) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("variant_of"))


def _default_model(repository: Path, names: list[str]) -> str:
    """The name in <repository>/DEFAULT_MODEL; without that file, an error that lists the models."""
    marker = repository / DEFAULT_MODEL_FILE
    try:
        name = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ManifestError(
            f"model repository {repository} holds several models ({', '.join(names)}); name one "
            f"(or write the default's name into {marker})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{marker} cannot be read: {e}") from None
    if name not in names:
        raise ManifestError(f"{marker} names {name!r}, which is not a model there; models: {', '.join(names)}")
    return name


def resolve_version_dir(repository: Path, name: str | None, version: int | None) -> Path:
    """The folder of one model version.

    name None: the only model in the repository (variants such as "<name>-int8" do not count
    when exactly one non-variant model is present), else the one named in DEFAULT_MODEL;
    otherwise an error listing the names.
    version None: the newest (largest integer) version.
    """
    repository = Path(repository)
    names = list_models(repository)
    if not names:
        raise ManifestError(f"model repository {repository} holds no model (no <name>/<version>/ folder)")
    if name is None:
        primary = [candidate for candidate in names if not _is_variant(repository / candidate)]
        if len(names) == 1:
            name = names[0]
        elif len(primary) == 1:
            name = primary[0]
        else:
            name = _default_model(repository, names)
    elif name not in names:
        raise ManifestError(
            f"no model {name!r} in {repository}; models there: {', '.join(names)}"
        )
    versions = list_versions(repository / name)
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise ManifestError(
            f"model {name!r} has no version {version} in {repository}; versions: "
            f"{', '.join(str(v) for v in versions)}"
        )
    return repository / name / str(version)
