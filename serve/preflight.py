"""Preflight: everything about a model version that can be checked before it serves a request.

Predictor.from_repository runs these checks, so osr-serve (before it listens) and osr-score
(before it reads an image) refuse the same broken repositories with the same message:

1. ``check_model_file_name``: before the model file is read, its name in the manifest is a
   plain file name inside the version folder (no path, no ".."), so a manifest cannot point
   the server at another file;
2. ``load``: the manifest parsed once into a ManifestRecord (osr.export.manifest), which
   refuses a manifest missing any field the server reads or holding one of the wrong type
   (classes are names, image_size is a positive integer, the threshold record is complete, ...),
   then the model file's sha256; ``check_location``: name and version agree with the folders;
3. ``check_graph`` (ONNX files): the file is an ONNX graph whose tensors are those of the
   manifest, whose logits are as many as the classes and whose unknown threshold (the constant
   in ``label = where(score < threshold, -1, argmax)``, export/graph.py) is the manifest's;
4. ``check_outputs``: a test batch through the backend gives outputs of the contract's shapes.

Every problem is a ManifestError with one line that names the file, says what is wrong and
how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from osr.export.manifest import (
    INPUT_NAME,
    MANIFEST_FILE,
    OUTPUT_NAMES,
    RE_EXPORT,
    ManifestError,
    ManifestRecord,
    load_record,
)

OUTPUT_DTYPES = {"logits": np.float32, "score": np.float32, "label": np.int64, "p_value": np.float32}


def one_line(error: object) -> str:
    """An error's message on one line (white space folded), as refusals print it."""
    return " ".join(str(error).split())


# -- before the model file is read ----------------------------------------------------------------

def check_model_file_name(version_dir: Path) -> None:
    """The manifest's model_file names a file directly inside ``version_dir``.

    Runs before load_manifest hashes the file. An unreadable manifest is left to load_manifest,
    which reports it."""
    path = Path(version_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    model_file = manifest.get("model_file") if isinstance(manifest, dict) else None
    if model_file is None:
        return
    plain = (isinstance(model_file, str) and model_file not in ("", ".", "..")
             and len(PurePosixPath(model_file).parts) == 1 and len(PureWindowsPath(model_file).parts) == 1)
    if not plain:
        raise ManifestError(f"{path}: model_file {model_file!r} must be a file name inside {version_dir} "
                            f"(no folders, no '..'); {RE_EXPORT}")


# -- the manifest ---------------------------------------------------------------------------------

def load(version_dir: Path) -> ManifestRecord:
    """The manifest of ``version_dir`` parsed once (ManifestRecord.from_manifest, the one check of
    its fields), its model file's sha256 checked, and its name and version against the folders."""
    record = load_record(version_dir)
    check_location(record, version_dir)
    return record


def check_location(record: ManifestRecord, version_dir: Path) -> None:
    """Name and version agree with the folders the manifest sits in."""
    path = Path(version_dir) / MANIFEST_FILE
    version, folder_version = record.version, Path(version_dir).name
    if str(version) != folder_version:
        raise ManifestError(f"{path}: the manifest says version {version} but its folder is {folder_version}; move "
                            f"the files to a folder named {version} or set version to {folder_version}")
    name, folder_name = record.name, Path(version_dir).parent.name
    if name != folder_name:
        raise ManifestError(f"{path}: the manifest names the model {name!r} but its folder is {folder_name!r}; "
                            f"clients find a model by its folder, so rename the folder to {name!r} or set name to "
                            f"{folder_name!r}")


def manifest_thresholds(record: ManifestRecord) -> np.ndarray:
    """The threshold of each class, as the graph stores them (float32)."""
    threshold = record.threshold
    values = threshold.per_class or threshold.value
    return np.broadcast_to(np.asarray(values, dtype=np.float32), (len(record.classes),))


# -- the graph ------------------------------------------------------------------------------------

def check_graph(model_path: Path, record: ManifestRecord) -> None:
    """The ONNX file against the manifest: tensors, number of classes, image size, threshold."""
    try:
        import onnx
        from onnx import helper
    except ImportError as exc:  # pragma: no cover - onnx is in the serve extra
        raise ManifestError(f"checking {model_path} needs the onnx package (pip install 'osr[serve]'): {exc}") from exc

    def fail(message: str) -> None:
        raise ManifestError(f"{model_path}: {message}; {RE_EXPORT}")

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for a file that is not a model
        raise ManifestError(f"{model_path} is not an ONNX model ({one_line(exc)}); {RE_EXPORT}") from None
    graph = model.graph
    if not graph.node or not graph.output:
        raise ManifestError(f"{model_path} is not an ONNX model (it holds no graph); {RE_EXPORT}")

    initializers = {tensor.name for tensor in graph.initializer}
    inputs = {t.name: _describe(t, helper) for t in graph.input if t.name not in initializers}
    outputs = {t.name: _describe(t, helper) for t in graph.output}
    if list(inputs) != [INPUT_NAME]:
        fail(f"the graph's inputs are {', '.join(inputs) or 'none'}, the contract is one input '{INPUT_NAME}'")
    for name in OUTPUT_NAMES:
        if name not in outputs:
            fail(f"the graph has no output '{name}' (it has {', '.join(outputs)})")
    for kind, entries, tensors in (("input", record.inputs, inputs), ("output", record.outputs, outputs)):
        for entry in entries:
            tensor = tensors.get(entry.get("name"))
            wanted = (entry.get("dtype"), list(entry.get("shape", [])))
            if tensor is None:
                fail(f"manifest {kind} {entry.get('name')!r} is not in the graph")
            if wanted != tensor:
                fail(f"manifest {kind} {entry['name']!r} is {wanted[0]} {wanted[1]}, the graph's is "
                     f"{tensor[0]} {tensor[1]}")

    size = record.image_size
    dtype, shape = inputs[INPUT_NAME]
    if dtype != "uint8" or len(shape) != 4 or shape[3] != 3:
        fail(f"the graph's input is {dtype} {shape}, the contract is uint8 [N, S, S, 3]")
    if shape[1:3] != [size, size]:
        fail(f"the graph takes {shape[1]} x {shape[2]} images but the manifest says image_size {size}")
    logits = outputs["logits"][1]
    classes = len(record.classes)
    if len(logits) != 2 or logits[1] != classes:
        fail(f"the graph has {logits[-1] if logits else 0} logits but the manifest lists {classes} classes")

    in_graph = _graph_thresholds(graph)
    if in_graph is None:
        fail("the graph does not compute label = where(score < threshold, -1, argmax) from a constant threshold "
             "as osr-export writes it")
    if in_graph.size not in (1, classes):
        fail(f"the graph holds {in_graph.size} thresholds for {classes} classes")
    expected = manifest_thresholds(record)
    found = np.broadcast_to(in_graph.astype(np.float32), expected.shape)
    if not np.allclose(found, expected, rtol=1e-6, atol=0.0):
        raise ManifestError(f"{model_path}: the manifest's threshold {_format(expected)} is not the graph's "
                            f"{_format(found)}; the graph decides 'unknown', so {RE_EXPORT} rather than edit "
                            f"{MANIFEST_FILE}")


def _describe(value_info: Any, helper: Any) -> tuple[str, list[int]]:
    """(numpy dtype name, shape with -1 for a symbolic dimension) of a graph input or output."""
    tensor = value_info.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except Exception:  # an undefined or exotic element type
        dtype = f"onnx type {tensor.elem_type}"
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return dtype, shape


def _format(values: np.ndarray) -> str:
    if np.all(values == values[0]):
        return f"{float(values[0]):g}"
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


_PASS_THROUGH = ("Identity", "Cast", "Expand", "Reshape", "Squeeze", "Unsqueeze")


def _graph_thresholds(graph: Any) -> np.ndarray | None:
    """The constant that ``score`` is compared with to make ``label`` -1, or None if not found."""
    from onnx import numpy_helper

    producers = {output: node for node in graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in graph.initializer}

    def source(name: str) -> tuple[str, Any]:
        node = producers.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            name = node.input[0]
            node = producers.get(name)
        return name, node

    def constant(name: str) -> np.ndarray | None:
        name, node = source(name)
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        if node is not None and node.op_type.startswith("Gather") and node.input:
            return constant(node.input[0])  # the per-class table, indexed by the argmax
        return None

    _, label = source("label")
    if label is None or label.op_type != "Where":
        return None
    _, comparison = source(label.input[0])
    if comparison is None or comparison.op_type not in ("Less", "Greater"):
        return None
    score, threshold = comparison.input if comparison.op_type == "Less" else comparison.input[::-1]
    if source(score)[0] != "score":
        return None
    values = constant(threshold)
    return None if values is None else values.astype(np.float64).ravel()


# -- a test batch ---------------------------------------------------------------------------------

def check_outputs(outputs: dict[str, np.ndarray], batch: int, num_classes: int, where: str) -> None:
    """Outputs of a test batch of ``batch`` images have the contract's names, dtypes and shapes."""
    def fail(message: str) -> None:
        raise ManifestError(f"{where}: {message}; {RE_EXPORT}")

    for name in OUTPUT_NAMES:
        if name not in outputs:
            fail(f"a test batch gave no output '{name}'")
    shapes = {name: tuple(np.shape(outputs[name])) for name in OUTPUT_NAMES}
    wanted = {"logits": (batch, num_classes), "score": (batch,), "label": (batch,), "p_value": (batch,)}
    for name, shape in wanted.items():
        if shapes[name] != shape:
            fail(f"a test batch of {batch} gave '{name}' of shape {list(shapes[name])}, the contract is {list(shape)}")
        if np.asarray(outputs[name]).dtype != OUTPUT_DTYPES[name]:
            fail(f"a test batch gave '{name}' as {np.asarray(outputs[name]).dtype}, the contract is "
                 f"{np.dtype(OUTPUT_DTYPES[name]).name}")
    labels = np.asarray(outputs["label"])
    if labels.size and (labels.min() < -1 or labels.max() >= num_classes):
        fail(f"a test batch gave labels outside -1..{num_classes - 1}")
