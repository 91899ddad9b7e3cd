"""CPU deployment: feature detection, the fastest PyTorch CPU path (bf16 / fp32), int8 PT2E, OpenVINO / ONNX Runtime.

- `cpu_features()`, `select_dtype()`: what the CPU multiplies natively and the precision "auto" picks.
- `fast_cpu_model(model, dtype="auto", batch, img_size)`: channels-last bf16 end to end where the
  CPU has AMX-BF16 / AVX512-BF16 (else fp32), the fastest of eager / inductor / TorchScript-oneDNN; on AMX
  CPUs each block runs in our kernels (`amx_gelu`), in fp32 too (exact fp32 arithmetic).
- `quantize_int8`, `save_int8`, `load_int8`: static int8 through PT2E with the x86 inductor quantizer.
- `export_onnx`, `export_openvino`, `OnnxRuntimeModule`, `OpenVINOModule`: the deployment runtimes;
  `RuntimeGraph`: an exported .onnx / OpenVINO .xml classifier file as a module (what `convnext.load` returns
  for one).

Names are imported on first use, so importing the package stays cheap.
"""
from .._lazy import lazy_attributes

_PUBLIC = {
    **dict.fromkeys(("CpuFeatures", "cpu_features", "parse_cpuinfo_flags", "select_dtype", "DTYPE_CHOICES"),
                    "convnext.deploy.features"),
    **dict.fromkeys(("CpuInferenceModel", "fast_cpu_model", "CANDIDATES"), "convnext.deploy.cpu"),
    **dict.fromkeys(("quantize_int8", "save_int8", "load_int8", "Int8Model"), "convnext.deploy.int8"),
    **dict.fromkeys(("export_onnx", "export_openvino", "read_openvino_meta", "OnnxRuntimeModule", "OpenVINOModule",
                     "preprocessing_meta", "RuntimeGraph"), "convnext.deploy.runtimes"),
}
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
