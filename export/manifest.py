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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osr.atomic import write_text_atomic

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"
RESIZE_RULE = {"rule": "shorter_side_center_crop", "interpolation": "bilinear"}
INPUT_NAME = "images"
RE_EXPORT = "re-export the model with osr-export"  # how every refused manifest is fixed
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


# The threshold record's fields the server reads (ThresholdRecord.from_dict refuses a record without one).
THRESHOLD_KEYS = ("value", "target_false_rejection", "n_calibration", "rank")


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


def _read_manifest(version_dir: Path) -> tuple[Path, Any]:
    path = Path(version_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {version_dir}")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error


def _check_model_file(version_dir: Path, path: Path, model_file: str, sha256: str) -> None:
    model_path = Path(version_dir) / model_file
    if not model_path.is_file():
        raise ManifestError(f"{path}: model file {model_file} is missing from {version_dir}")
    actual = sha256_file(model_path)
    if actual != sha256:
        raise ManifestError(
            f"{path}: sha256 mismatch for {model_file}: manifest says {sha256}, "
            f"file has {actual}; the model file was changed after export"
        )


def load_manifest(version_dir: Path) -> dict:
    """Read <version_dir>/manifest.json, check its schema version and the model file's sha256.

    The export side's reader (fields present); serving reads ``load_record``, which also checks
    every field it uses."""
    path, manifest = _read_manifest(version_dir)
    validate_manifest(manifest, where=str(path))
    _check_model_file(version_dir, path, manifest["model_file"], manifest["sha256"])
    return manifest


def load_record(version_dir: Path) -> ManifestRecord:
    """``load_manifest`` for serving: the manifest parsed once into a ManifestRecord (every field
    the server reads, checked), then the model file's sha256."""
    path, manifest = _read_manifest(version_dir)
    record = ManifestRecord.from_manifest(manifest, where=str(path))
    _check_model_file(version_dir, path, record.model_file, record.sha256)
    return record


# -- the typed record the server reads --------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_object(value: object) -> bool:
    return value is None or isinstance(value, dict)


def _is_tensor(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list) and all(_is_int(d) for d in entry["shape"]))


@dataclass(frozen=True)
class ThresholdRecord:
    """The manifest's "threshold" object (written by osr.export.conformal), typed.

    ``rank`` is k and ``n_calibration`` n of the split-conformal threshold (the k-th smallest of
    n calibration scores); with ``per_class`` set the graph uses per_class[argmax] and ``value``
    is kept for reference. ``from_dict`` is the one reader of the object, ``to_manifest`` the one
    writer.
    """

    value: float
    target_false_rejection: float
    n_calibration: int
    rank: int
    method: str = "split_conformal"
    confidence: float | None = None
    per_class: tuple[float, ...] | None = None
    per_class_n_calibration: tuple[int, ...] | None = None

    @property
    def per_class_thresholds(self) -> bool:
        return self.per_class is not None

    @property
    def expected_unknown_rate(self) -> float | None:
        """k / (n + 1), the exact marginal unknown rate of known images without ties; None with
        per-class thresholds."""
        return None if self.per_class_thresholds else self.rank / (self.n_calibration + 1)

    def to_manifest(self) -> dict:
        return {
            "value": float(self.value),
            "target_false_rejection": float(self.target_false_rejection),
            "method": self.method,
            "n_calibration": int(self.n_calibration),
            "confidence": self.confidence,
            "per_class": None if self.per_class is None else [float(v) for v in self.per_class],
            "per_class_n_calibration": (None if self.per_class_n_calibration is None
                                        else list(self.per_class_n_calibration)),
            "rank": int(self.rank),
        }

    @classmethod
    def from_dict(cls, threshold: Mapping, where: str = "manifest", num_classes: int | None = None) -> ThresholdRecord:
        """ManifestError naming the field unless ``threshold`` holds every field the server reads."""
        def fail(message: str) -> None:
            raise ManifestError(f"{where}: {message}; {RE_EXPORT}")

        if isinstance(threshold, ThresholdRecord):
            return threshold
        if not isinstance(threshold, Mapping):
            raise ManifestError(f"{where}: field threshold must be an object with a 'value'")
        for name in THRESHOLD_KEYS:
            if name not in threshold:
                fail(f"missing field threshold.{name}")
        value = threshold["value"]
        if not _is_number(value):
            fail(f"threshold.value must be a finite number, got {value!r}")
        alpha = threshold["target_false_rejection"]
        if not _is_number(alpha) or not 0.0 < alpha < 1.0:
            fail(f"threshold.target_false_rejection must be a number between 0 and 1, got {alpha!r}")
        n = threshold["n_calibration"]
        if not _is_int(n) or n < 1:
            fail(f"threshold.n_calibration must be a positive integer, got {n!r}")
        rank = threshold["rank"]
        if not _is_int(rank) or not 0 <= rank <= n:
            fail(f"threshold.rank must be an integer from 0 to n_calibration ({n}), got {rank!r}")
        method = threshold.get("method", "split_conformal")
        if not isinstance(method, str):
            fail(f"threshold.method must be a name, got {method!r}")
        confidence = threshold.get("confidence")
        if confidence is not None and not _is_number(confidence):
            fail(f"threshold.confidence must be a number or null, got {confidence!r}")
        per_class = threshold.get("per_class")
        if per_class is not None:
            if not isinstance(per_class, list) or not all(_is_number(v) for v in per_class):
                fail("threshold.per_class must be a list of finite numbers or null")
            if num_classes is not None and len(per_class) != num_classes:
                fail(f"threshold.per_class has {len(per_class)} values for {num_classes} classes")
        per_class_n = threshold.get("per_class_n_calibration")
        return cls(
            value=float(value), target_false_rejection=float(alpha), n_calibration=n, rank=rank, method=method,
            confidence=confidence, per_class=None if per_class is None else tuple(float(v) for v in per_class),
            per_class_n_calibration=tuple(per_class_n) if isinstance(per_class_n, list) else None,
        )


@dataclass(frozen=True)
class ManifestRecord:
    """A manifest as the server reads it: every field it uses, typed and checked once.

    ``from_manifest`` is the one check of a manifest on load (osr.serve.preflight); the server
    reads these attributes, never the JSON's keys. ``raw`` is the JSON object it came from.
    """

    name: str
    version: int
    model_file: str
    sha256: str
    classes: tuple[str, ...]
    image_size: int
    resize_rule: str
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]
    score_function: str
    threshold: ThresholdRecord
    metrics: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_manifest(cls, manifest: Any, where: str = "manifest") -> ManifestRecord:
        """ManifestError with one line naming the field unless ``manifest`` holds every field the
        server reads, of the type it reads."""
        def fail(message: str) -> None:
            raise ManifestError(f"{where}: {message}; {RE_EXPORT}")

        if isinstance(manifest, ManifestRecord):
            return manifest
        validate_manifest(manifest, where)
        version = manifest["version"]
        if not _is_int(version) or version < 1:
            fail(f"version must be a positive integer, got {version!r}")
        name = manifest["name"]
        if not isinstance(name, str) or not name:
            fail(f"name must be a non-empty string, got {name!r}")
        model_file, sha256 = manifest["model_file"], manifest["sha256"]
        if not isinstance(model_file, str) or not isinstance(sha256, str):
            fail("model_file and sha256 must be strings")
        resize = manifest["resize"]
        if not isinstance(resize, dict):
            fail(f"resize must be an object with a 'rule', got {resize!r}")
        rule = resize.get("rule")
        if rule != RESIZE_RULE["rule"]:
            fail(f"resize rule {rule!r} is not supported (want {RESIZE_RULE['rule']!r})")
        for kind in ("inputs", "outputs"):
            entries = manifest[kind]
            if not isinstance(entries, list) or not all(_is_tensor(entry) for entry in entries):
                fail(f"{kind} must be a list of tensors, each with a name, a dtype and a shape of integers")
        inputs = manifest["inputs"]
        if inputs and (inputs[0]["name"] != INPUT_NAME or inputs[0]["dtype"] != "uint8"):
            fail(f"input {inputs[0]} is not the contract's uint8 '{INPUT_NAME}' tensor")
        classes = manifest["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
            fail("classes must be a non-empty list of names")
        image_size = manifest["image_size"]
        if not _is_int(image_size) or image_size < 1:
            fail(f"image_size must be a positive integer, got {image_size!r}")
        score_function = manifest["score_function"]
        if not isinstance(score_function, str):
            fail(f"score_function must be a name, got {score_function!r}")
        threshold = ThresholdRecord.from_dict(manifest["threshold"], where, len(classes))
        metrics, provenance = manifest.get("metrics"), manifest.get("provenance")
        if not _is_object(metrics) or not _is_object((metrics or {}).get("false_rejection")):
            fail("metrics and metrics.false_rejection must be objects or null")
        if not _is_object(provenance):
            fail("provenance must be an object or null")
        return cls(
            name=name, version=version, model_file=model_file, sha256=sha256, classes=tuple(classes),
            image_size=image_size, resize_rule=rule, inputs=tuple(inputs), outputs=tuple(manifest["outputs"]),
            score_function=score_function, threshold=threshold, metrics=metrics or {},
            provenance=provenance or {}, raw=manifest,
        )


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
