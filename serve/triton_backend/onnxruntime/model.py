"""A CPU stand-in for Triton's `onnxruntime` backend, written as a Python-based backend.

Triton maps `platform: "onnxruntime_onnx"` to the backend named `onnxruntime`; when the backend
directory holds `onnxruntime/model.py` instead of the C++ `libtriton_onnxruntime.so`, Triton runs
this file through its Python backend. That lets the unchanged osr model repository load in the
pip-installed tritonserver (no Docker, no GPU) for tests and local use. GPU servers use the
real backend from the NGC container; see docs/deploy-triton.md.

Like the real backend it checks the config against the graph at load time, honours `reshape`,
and runs all requests of a dynamic batch in one `session.run`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


def _model_shape(tensor_config: dict) -> list[int]:
    """The graph's non-batch shape: `reshape.shape` when present, else `dims`."""
    reshape = tensor_config.get("reshape")
    return [int(size) for size in (reshape.get("shape", []) if reshape is not None else tensor_config["dims"])]


def _check_against_graph(kind: str, tensor_config: dict, graph_args: dict) -> None:
    name = tensor_config["name"]
    if name not in graph_args:
        raise pb_utils.TritonModelException(f"{kind} {name!r} is in config.pbtxt but not in the ONNX graph")
    graph = graph_args[name]
    expected = pb_utils.triton_string_to_numpy(tensor_config["data_type"])
    if ONNX_TYPES.get(graph.type) != expected:
        raise pb_utils.TritonModelException(f"{kind} {name!r}: config says {tensor_config['data_type']}, graph has {graph.type}")
    graph_dims = list(graph.shape)[1:]
    config_dims = _model_shape(tensor_config)
    static_mismatch = len(graph_dims) != len(config_dims) or any(
        isinstance(g, int) and g != c for g, c in zip(graph_dims, config_dims)
    )
    if static_mismatch:
        raise pb_utils.TritonModelException(f"{kind} {name!r}: config shape {config_dims}, graph shape {graph.shape}")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if int(config.get("max_batch_size", 0)) < 1:
            raise pb_utils.TritonModelException("this stand-in backend needs max_batch_size >= 1")
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        graph_inputs = {arg.name: arg for arg in self.session.get_inputs()}
        graph_outputs = {arg.name: arg for arg in self.session.get_outputs()}
        self.inputs = config["input"]
        self.outputs = config["output"]
        for tensor in self.inputs:
            _check_against_graph("input", tensor, graph_inputs)
        for tensor in self.outputs:
            _check_against_graph("output", tensor, graph_outputs)

    def _gather(self, request) -> dict:
        feeds = {}
        for tensor in self.inputs:
            found = pb_utils.get_input_tensor_by_name(request, tensor["name"])
            if found is None:
                raise ValueError(f"request has no input {tensor['name']!r}")
            array = found.as_numpy()
            feeds[tensor["name"]] = array.reshape([array.shape[0]] + _model_shape(tensor))
        return feeds

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        feeds_per_request = []
        for position, request in enumerate(requests):
            try:
                feeds_per_request.append((position, self._gather(request)))
            except ValueError as error:
                responses[position] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        if feeds_per_request:
            names = [tensor["name"] for tensor in self.inputs]
            batch = {name: np.concatenate([feeds[name] for _, feeds in feeds_per_request]) for name in names}
            sizes = [feeds[names[0]].shape[0] for _, feeds in feeds_per_request]
            try:
                results = self.session.run([tensor["name"] for tensor in self.outputs], batch)
            except Exception as error:  # one failed run fails every request in it, as in Triton
                for position, _ in feeds_per_request:
                    responses[position] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
                return responses
            bounds = np.cumsum([0] + sizes)
            for (position, _), start, stop in zip(feeds_per_request, bounds[:-1], bounds[1:]):
                wanted = set(requests[position].requested_output_names()) or {t["name"] for t in self.outputs}
                tensors = []
                for tensor, result in zip(self.outputs, results):
                    if tensor["name"] in wanted:
                        # Clients see the config's dims, e.g. [N, 1] for a graph output [N] with reshape [].
                        shape = [stop - start] + [int(size) for size in tensor["dims"]]
                        tensors.append(pb_utils.Tensor(tensor["name"], np.ascontiguousarray(result[start:stop].reshape(shape))))
                responses[position] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
