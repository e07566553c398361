// Fast path of causal GQA attention through cuDNN's fused flash-attention graphs (bf16 in/out, f32 stats).
// Internal to engine/cuda (attention.cu routes to it; the GPU tests call it directly). Plain C++ header.
#pragma once
#include "engine/tensor.h"

namespace monta::engine::cuda {

// Shape/dtype class cuDNN's fused SDPA handles here: bf16 q/k/v, head dim 64 or 128, G divides A.
bool cudnn_attention_supported(const Tensor& q, const Tensor& k);
// True when attention_forward/backward should try cuDNN: supported and engine::settings().attention is automatic
// (read on every call, so tests and bench ops can switch paths at run time).
bool cudnn_attention_wanted(const Tensor& q, const Tensor& k);
// Run through cuDNN. Return false, having launched nothing, when the case is unsupported or cuDNN could not
// build (or run) an execution plan for it; the caller then falls back to the hand-written kernels.
// Arguments as engine::attention_forward/backward (already validated by the caller).
bool cudnn_attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s);
bool cudnn_attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, Stream s);

}  // namespace monta::engine::cuda
