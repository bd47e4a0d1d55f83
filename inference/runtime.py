"""The TFLite model as the runtime sees it: load, verify against its metadata, invoke tiles.

The interpreter comes from ``ai_edge_litert`` (the maintained LiteRT wheel) and falls back to
``tflite_runtime`` where a device image ships that instead; both expose the same Interpreter
API. TensorFlow is never imported here.

Loading checks, in order, and turns every failure into a `ModelError` that names the file: the
model and metadata files exist; the metadata validates; the file's SHA-256 equals the one in the
metadata (a truncated copy or a model swapped without its metadata is refused); the interpreter
accepts the flatbuffer; the input/output tensors have exactly the shapes, dtypes and
quantization parameters the metadata declares.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from inference.errors import InferenceError, ModelError
from inference.model_spec import ModelSpec, QuantizationSpec, file_sha256, load_spec, metadata_path_for

__all__ = ["DEFAULT_MODEL_PATH", "ModelInfo", "TfliteModel", "runtime_name"]

_log = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "xray_anomaly.tflite"


class _Interpreter(Protocol):
    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def get_tensor_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, index: int, value: npt.NDArray[Any]) -> None: ...
    def get_tensor(self, index: int) -> npt.NDArray[Any]: ...
    def invoke(self) -> None: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the hub is told about the loaded model (birth message, transactions)."""

    name: str
    version: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def _interpreter_class() -> tuple[type[Any], str]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as err:
            raise ModelError("no TFLite runtime: install ai-edge-litert (or tflite-runtime)") from err
        return Interpreter, "tflite_runtime"
    return Interpreter, "ai_edge_litert"


def runtime_name() -> str:
    """Which interpreter package this process uses (``ai_edge_litert`` or ``tflite_runtime``)."""
    return _interpreter_class()[1]


def _quant_of(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _check_tensor(kind: str, detail: dict[str, Any], shape: tuple[int, ...], dtype: str, *,
                  quant: QuantizationSpec | None, path: Path) -> None:
    got_shape = tuple(int(d) for d in detail["shape"])
    if got_shape != tuple(shape):
        raise ModelError(f"{path}: {kind} tensor shape {got_shape} != metadata {tuple(shape)}")
    got_dtype = np.dtype(detail["dtype"]).name
    if got_dtype != dtype:
        raise ModelError(f"{path}: {kind} tensor dtype {got_dtype} != metadata {dtype}")
    if quant is not None:
        scale, zero = _quant_of(detail)
        if zero != quant.zero_point or not np.isclose(scale, quant.scale, rtol=1e-5, atol=0):
            raise ModelError(
                f"{path}: {kind} quantization (scale {scale}, zero {zero}) != metadata "
                f"(scale {quant.scale}, zero {quant.zero_point})")


class TfliteModel:
    """One verified interpreter. Not thread-safe: one owner calls `run`."""

    def __init__(self, model_path: Path | None = None, num_threads: int = 1, *,
                 preserve_all_tensors: bool = False) -> None:
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (got {num_threads})")
        if not path.is_file():
            raise ModelError(f"model file {path} not found")
        spec = load_spec(metadata_path_for(path))
        digest = file_sha256(path)
        if digest != spec.sha256:
            raise ModelError(f"{path}: SHA-256 {digest[:16]}... does not match its metadata "
                             f"({spec.sha256[:16]}...): corrupt or mismatched model file")
        cls, backend = _interpreter_class()
        try:
            # preserve_all_tensors keeps intermediate feature maps readable after invoke (site
            # adaptation models normal traffic on them); it costs memory, so only when asked.
            extra = {"experimental_preserve_all_tensors": True} if preserve_all_tensors else {}
            with warnings.catch_warnings():
                # LiteRT warns that this is a debugging aid that costs memory: known and wanted here.
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                interp: _Interpreter = cls(model_path=str(path), num_threads=num_threads, **extra)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{path}: the TFLite runtime refused the model: {err}") from err
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected 1 input and 1 output tensor, got {len(inputs)}/{len(outputs)}")
        _check_tensor("input", inputs[0], spec.input.shape, spec.input.dtype, quant=spec.input.quantization,
                      path=path)
        _check_tensor("output", outputs[0], spec.output.shape, spec.output.dtype, quant=spec.output.quantization,
                      path=path)
        self.path = path
        self.spec: ModelSpec = spec
        self.backend = backend
        self.num_threads = num_threads
        self.info = ModelInfo(name=spec.name, version=spec.version, sha256=digest)
        self._interp = interp
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        _log.info("loaded model %s %s (%s, %d thread(s), %s)", spec.name, spec.version, path.name,
                  num_threads, backend)

    def tensor_details(self) -> list[dict[str, Any]]:
        """Every tensor of the graph (name, index, shape, dtype, quantization)."""
        return list(self._interp.get_tensor_details())

    def tensor(self, index: int) -> npt.NDArray[Any]:
        """A tensor after the last `run` (intermediate ones need ``preserve_all_tensors``)."""
        try:
            return self._interp.get_tensor(index)
        except (ValueError, RuntimeError) as err:
            raise InferenceError(f"tensor {index} not readable: {err}") from err

    def run(self, tile: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Invoke on one input tile (already quantized, full input shape); returns the raw output."""
        try:
            self._interp.set_tensor(self._in_index, tile)
            self._interp.invoke()
            return self._interp.get_tensor(self._out_index)
        except (ValueError, RuntimeError) as err:
            raise InferenceError(f"TFLite invoke failed: {err}") from err
