"""`llamalocal quantize`: type plans as llama-quantize mixes them (`plan`),
the streamed round-to-nearest run (`run`), GPTQ (`gptq`) and its
layer-by-layer calibration (`calibration`)."""
from .plan import FILE_TYPES, file_type, plan_types
from .run import QuantizeResult, format_report, quantize_model

__all__ = ["FILE_TYPES", "QuantizeResult", "file_type", "format_report", "plan_types", "quantize_model"]
