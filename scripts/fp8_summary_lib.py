"""Shared by the FP8 device scripts' summaries (device_fp8.sh, device_fp8_layer.sh): reading their JSON from $OUT
and the GEMM-ceilings line of `monta bench fp8`."""
import json
import os


def loader(out):
    """load(name): the JSON file out/name, or None when the run that writes it failed."""
    def load(name):
        p = os.path.join(out, name)
        return json.load(open(p)) if os.path.exists(p) else None
    return load


def ceilings_line(b):
    """The bf16 and FP8 8192^3 GEMM ceilings of one `bench fp8` run, their ratio and the FP8 forward's error."""
    return (f"GEMM ceilings: bf16 {b['gemm_bf16_tflops']:.1f} TFLOP/s, fp8 {b['gemm_fp8_tflops']:.1f} TFLOP/s "
            f"(fp8/bf16 {b['gemm_fp8_tflops'] / b['gemm_bf16_tflops']:.2f}x); "
            f"fp8 forward vs bf16 rel. error {b['fp8_fwd_rel_err']:.4f}")
