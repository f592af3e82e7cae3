"""Reduced-precision encoders: an exported fp32 graph -> int8 (CPU) or fp16 (GPU), with onnxruntime's tools.

* ``int8``: static QDQ quantisation (``onnxruntime.quantization.quantize_static``)
  after onnxruntime's pre-processing (shape inference, batch-norm folding):
  per-channel int8 weights (the depthwise convolutions need them), uint8
  activations whose ranges come from the calibration set (MinMax over real
  photos or rendered views, :mod:`ftspl.export.calibration`). The
  convolutions (99.5% of the encoder's time) are quantised with their ReLU6
  (``Clip``): the activation's range becomes the convolution's output range, so
  onnxruntime fuses each convolution into one int8 kernel with nothing in float
  between two of them. Leaving the Clips out costs both ways (EfficientNet-Lite0,
  pretrained, 12 photos, one thread): the output ranges are calibrated before
  the clip, too wide (cosine to fp32 0.88 instead of 0.99), and a float Clip
  between a dequantise and a quantise per block makes the graph no faster than
  fp32 (146 vs 134 ms per 12 images; 65 ms with the Clips). The pooling, the head and the L2
  normalisation stay in fp32, so both outputs of the multi-view graph (pooled
  and per-view) end in the same fp32 head.
* ``fp16``: onnxruntime's float16 conversion
  (``onnxruntime.transformers.float16``), fp32 inputs and outputs kept, so the
  engine feeds and reads it as it does an fp32 graph. Made for CUDA; the CPU
  provider has no fp16 convolution and the engine refuses it there.

Either way the reduced graph is compared with the fp32 one on real inputs (the
calibration set for int8, the same for fp16 when it runs here): the cosine of
each embedding to its fp32 twin is recorded in the manifest. It is a check
that the conversion worked, not the verdict on retrieval, which
``benchmarks/precision.py`` measures.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ftspl.engine.errors import ModelError, UnknownKeyError
from ftspl.engine.model.manifest import PRECISIONS

log = logging.getLogger(__name__)

#: what ``ftspl export`` writes without --precision: :func:`resolve_precision` picks
DEFAULT_PRECISION = "auto"
#: ``auto``'s choice on a machine without CUDA, when calibration data is at hand: int8 moved val FT and NN
#: by less than 0.005 on the tuning seeds (``benchmarks/precision.py``, docs/PERFORMANCE.md "Precision")
CPU_DEFAULT = "int8"
QUANTIZED_OPS = ("Conv", "Clip", "Relu")  #: op types int8 quantises (see the module docstring)
CALIBRATION_METHOD = "MinMax"
#: the reduced graph's mean cosine to fp32 below which the export is refused (a broken conversion, not a
#: close call: a working int8 EfficientNet-Lite0 stays above 0.95)
MIN_MEAN_COSINE = 0.8


def check_precision(precision: str) -> str:
    """``precision`` itself, or :class:`UnknownKeyError` naming ``--precision`` and the valid values."""
    if precision not in PRECISIONS:
        raise UnknownKeyError("--precision", precision, ("auto", *PRECISIONS))
    return precision


def resolve_precision(precision: str, data: dict | None, calibration: Path | None) -> str:
    """The precision to export: ``precision`` itself, or for ``auto`` the CPU default or fp32.

    ``auto`` gives :data:`CPU_DEFAULT` (int8) when onnxruntime's CUDA provider
    cannot run here (:func:`~ftspl.engine.model.cuda.cuda_usable`) and calibration data is at hand (``calibration``, or the run's
    ``photos`` and ``shapes`` folders in ``data``); fp32 otherwise (a GPU
    machine, or ``--pretrained`` without ``--calibration``).
    """
    if precision != "auto":
        return check_precision(precision)
    from ftspl.engine.model.cuda import cuda_usable

    if cuda_usable():
        return "fp32"
    data = data or {}
    have = calibration is not None or all(data.get(k) and Path(data[k]).is_dir() for k in ("photos", "shapes"))
    return CPU_DEFAULT if have else "fp32"


def quantize_int8(fp32: Path, out: Path, reader) -> None:
    """Write the int8 QDQ graph of ``fp32`` to ``out``, calibrated on ``reader`` (a CalibrationDataReader)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="ftspl-quant-") as tmp:
        prep = Path(tmp) / "prep.onnx"
        try:
            quant_pre_process(str(fp32), str(prep))
        except Exception as exc:  # noqa: BLE001 - symbolic shape inference fails on some graphs; onnx's is enough
            log.info("%s: symbolic shape inference failed (%s); using onnx's shape inference", fp32.name, exc)
            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        try:
            quantize_static(
                str(prep), str(out), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
            )
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{fp32.name}: onnxruntime could not quantise it ({exc}); export --precision fp32") from exc


def convert_fp16(fp32: Path, out: Path) -> None:
    """Write the fp16 graph of ``fp32`` to ``out`` (fp32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(out))


def cosine_check(fp32: Path, reduced: Path, input_name: str, outputs: tuple[str, ...],
                 batches: list[np.ndarray]) -> dict | None:
    """Cosine of each embedding of ``reduced`` to ``fp32``'s on ``batches``, per output: {output: {min, mean}}.

    None when this machine cannot run ``reduced`` (an fp16 graph without CUDA).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(fp32), sess_options=opts, providers=["CPUExecutionProvider"])
    from ftspl.engine.model.cuda import cuda_usable

    providers = (["CUDAExecutionProvider"] if cuda_usable() else []) + ["CPUExecutionProvider"]
    try:
        got = ort.InferenceSession(str(reduced), sess_options=opts, providers=providers)
        runs = [(ref.run(list(outputs), {input_name: b}), got.run(list(outputs), {input_name: b})) for b in batches]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are plain RuntimeErrors/its own Fail
        log.info("%s: cannot run it here (%s); no precision check", reduced.name, str(exc).splitlines()[0][:200])
        return None
    out = {}
    for k, name in enumerate(outputs):
        a = np.concatenate([r[k].reshape(-1, r[k].shape[-1]) for r, _ in runs]).astype(np.float64)
        b = np.concatenate([g[k].reshape(-1, g[k].shape[-1]) for _, g in runs]).astype(np.float64)
        cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        out[name] = {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 4), "n": int(len(cos))}
    return out


def reduce_encoder(precision: str, fp32: Path, out: Path, input_name: str, outputs: tuple[str, ...],
                   batches: list[np.ndarray]) -> dict | None:
    """Convert one exported encoder to ``precision`` and check it on ``batches``; the check's record.

    int8 calibrates on ``batches`` (and the check runs on them too); a mean
    cosine under :data:`MIN_MEAN_COSINE` refuses the export.
    """
    if precision == "int8":
        from ftspl.export.calibration import BatchReader

        quantize_int8(fp32, out, BatchReader(input_name, batches))
    elif precision == "fp16":
        convert_fp16(fp32, out)
    else:
        raise UnknownKeyError("--precision", precision, PRECISIONS)
    check = cosine_check(fp32, out, input_name, outputs, batches)
    if check is not None:
        worst = min(v["mean"] for v in check.values())
        log.info("%s %s vs fp32: %s", fp32.stem, precision, check)
        if worst < MIN_MEAN_COSINE:
            raise ModelError(f"{fp32.stem}: the {precision} graph's embeddings have a mean cosine of {worst:.3f} "
                                 f"to fp32's (< {MIN_MEAN_COSINE}); model not exported (use --precision fp32)")
    return check


__all__ = ["CALIBRATION_METHOD", "CPU_DEFAULT", "DEFAULT_PRECISION", "MIN_MEAN_COSINE", "PRECISIONS", "QUANTIZED_OPS",
           "check_precision", "convert_fp16", "resolve_precision", "cosine_check", "quantize_int8", "reduce_encoder"]
