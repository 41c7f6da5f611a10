// The only file that knows torch: checks tensors, allocates outputs and scratch, fills the plain parameter
// structs and registers the CUDA implementations of the ops whose schema flash_tree_attn/_ops.py defines, and the
// autograd of the forward op.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "kernel_api.h"

namespace flash_tree_attn {
namespace {

// Error messages are built with std::to_string, snprintf and string appends, never through an ostream (c10::str,
// the operator<< of TORCH_CHECK's arguments). Where a build links libstdc++ into the extension statically (the
// GPU test machine's gcc 13 does), that copy of the stream code cannot use the locale of the process's shared
// libstdc++: formatting a number through it crashed the process (gcc 13) or printed nothing (gcc 12 with
// -static-libstdc++), so a bad input got a segmentation fault instead of its error
// (bench_results/binding-errors-gpu-machine-build-2026-11-30-session8.txt).
void append(std::string &s, const char *x) { s += x; }
void append(std::string &s, const std::string &x) { s += x; }
void append(std::string &s, bool x) { s += x ? "true" : "false"; }
template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
void append(std::string &s, T x) {
    s += std::to_string(x);
}
void append(std::string &s, double x) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", x);
    s += buf;
}
void append(std::string &s, c10::IntArrayRef x) {
    s += "[";
    for (size_t i = 0; i < x.size(); ++i) {
        if (i > 0) s += ", ";
        s += std::to_string(x[i]);
    }
    s += "]";
}
void append(std::string &s, c10::ScalarType x) { s += c10::toString(x); }
void append(std::string &s, const c10::Device &x) { s += x.str(); }

template <class... Parts>
std::string message(const Parts &...parts) {
    std::string s = "flash_tree_attn: ";
    (append(s, parts), ...);
    return s;
}

// TORCH_CHECK with a message built by message(); only evaluated when the check fails.
#define FTA_CHECK(cond, ...) TORCH_CHECK(cond, message(__VA_ARGS__).c_str())

void check_device_capability(const at::Tensor &q) {
    const cudaDeviceProp *prop = at::cuda::getDeviceProperties(q.get_device());
    FTA_CHECK(prop->major >= 8, "needs an NVIDIA GPU of compute capability 8.0 (Ampere) or newer; ",
              prop->name, " is sm_", prop->major, prop->minor);
}

// The GPU's opt-in shared memory per block, or less where FLASH_TREE_ATTN_MAX_SMEM (bytes) says so: with it the
// tests run the kernel configurations of a smaller GPU (an A100's 163 KB) on Hopper.
int max_smem_per_block(const cudaDeviceProp &prop) {
    int bytes = static_cast<int>(prop.sharedMemPerBlockOptin);
    if (const char *cap = std::getenv("FLASH_TREE_ATTN_MAX_SMEM")) {
        const int v = std::atoi(cap);
        if (v > 0 && v < bytes) bytes = v;
    }
    return bytes;
}

void check_qkv(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v) {
    FTA_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "q, k, v must be CUDA tensors");
    FTA_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q, k, v must be (tokens, heads, head_dim); got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
    const auto dtype = q.scalar_type();
    FTA_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "q must be float16 or bfloat16, got ", dtype);
    FTA_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, "q, k, v must share a dtype");
    FTA_CHECK(q.stride(-1) == 1 && k.stride(-1) == 1 && v.stride(-1) == 1,
              "q, k, v must have a contiguous last dimension");
    FTA_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
    FTA_CHECK(q.size(2) == k.size(2), "q and k must have the same head dim");
    FTA_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "query heads must be a multiple of key/value heads; got ",
              q.size(1), " and ", k.size(1));
    for (const at::Tensor *t : {&q, &k, &v}) {
        // The kernels move 16-byte vectors (8 elements) with cp.async.
        FTA_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0 && t->stride(0) % 8 == 0 &&
                      t->stride(1) % 8 == 0,
                  "q, k, v must start on a 16-byte boundary with token and head strides that are multiples of 8 "
                  "elements; got strides ", t->strides(), " (call .contiguous() first)");
    }
    const int64_t d = q.size(2);
    FTA_CHECK(d > 0 && d <= 256 && d % 8 == 0, "head dim must be a multiple of 8 up to 256, got ", d);
    FTA_CHECK(head_dim_bucket(static_cast<int>(d)) > 0, "head dim ", d,
              " is larger than every head dim compiled into this build (", compiled_head_dims(),
              "); rebuild with FLASH_TREE_ATTN_HEAD_DIMS including a larger bucket");
}

void check_index(const at::Tensor &t, const char *name, int64_t length, const at::Tensor &q) {
    FTA_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
    FTA_CHECK(t.device() == q.device(), name, " must be on ", q.device());
    FTA_CHECK(t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D tensor");
    FTA_CHECK(length < 0 || t.size(0) == length, name, " must have ", length, " entries, got ", t.size(0));
}

KernelPath to_path(int64_t code) {
    switch (code) {
        case 0: return KernelPath::kAuto;
        case 80: return KernelPath::kSm80;
        case 90: return KernelPath::kSm90;
        default: FTA_CHECK(false, "kernel_path must be 0 (auto), 80 or 90, got ", code);
    }
}

// run_fwd / run_bwd return nullptr or why no kernel ran; the error adds the configuration it was asked for.
void check_kernel_ran(const char *err, const FwdParams &p) {
    FTA_CHECK(err == nullptr, err, " (head dim ", p.shape.head_dim, ", ", p.is_bf16 ? "bf16" : "fp16",
              ", causal=", p.causal, "; compiled head dims: ", compiled_head_dims(), "; shared memory per block: ",
              p.max_smem_per_block, " bytes)");
}

// Fills everything the forward and backward share. Returns the tree-bounds scratch (kept alive by the caller).
std::optional<at::Tensor> fill_common(FwdParams &p, const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                                      const at::Tensor &cu_q, const at::Tensor &cu_k,
                                      const std::optional<at::Tensor> &start_q, const std::optional<at::Tensor> &end_k,
                                      int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal,
                                      int64_t window_left, int64_t window_right, double softcap) {
    check_qkv(q, k, v);
    check_device_capability(q);
    FTA_CHECK(window_left == -1 && window_right == -1, "sliding-window attention is not supported");
    FTA_CHECK(softcap == 0.0, "softcap is not supported");
    FTA_CHECK(softmax_scale > 0.0, "softmax_scale must be positive, got ", softmax_scale);
    FTA_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0 && max_seqlen_q <= INT32_MAX && max_seqlen_k <= INT32_MAX,
              "max_seqlen out of range");
    FTA_CHECK(q.size(0) <= INT32_MAX && k.size(0) <= INT32_MAX, "too many tokens for int32 indices");
    check_index(cu_q, "cu_seqlens_q", -1, q);
    check_index(cu_k, "cu_seqlens_k", cu_q.size(0), q);
    FTA_CHECK(cu_q.size(0) >= 1, "cu_seqlens must have at least one entry");
    FTA_CHECK(start_q.has_value() == end_k.has_value(), "pass both tree arrays or neither");
    if (start_q.has_value()) {
        FTA_CHECK(causal, "tree attention requires causal=True");
        check_index(*start_q, "tree_dfs_order_start_q", q.size(0), q);
        check_index(*end_k, "tree_dfs_order_end_k", k.size(0), q);
    }

    p.shape.batch = static_cast<int>(cu_q.size(0) - 1);
    p.shape.num_heads_q = static_cast<int>(q.size(1));
    p.shape.num_heads_kv = static_cast<int>(k.size(1));
    p.shape.head_dim = static_cast<int>(q.size(2));
    p.shape.max_seqlen_q = static_cast<int>(max_seqlen_q);
    p.shape.max_seqlen_k = static_cast<int>(max_seqlen_k);
    p.shape.total_q = static_cast<int>(q.size(0));
    p.shape.total_k = static_cast<int>(k.size(0));
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.q_row_stride = q.stride(0);
    p.q_head_stride = q.stride(1);
    p.k_row_stride = k.stride(0);
    p.k_head_stride = k.stride(1);
    p.v_row_stride = v.stride(0);
    p.v_head_stride = v.stride(1);
    p.cu_seqlens_q = cu_q.data_ptr<int>();
    p.cu_seqlens_k = cu_k.data_ptr<int>();
    p.softmax_scale = static_cast<float>(softmax_scale);
    p.softmax_scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
    p.causal = causal;
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    const cudaDeviceProp *prop = at::cuda::getDeviceProperties(q.get_device());  // cached by torch
    p.num_sms = prop->multiProcessorCount;
    p.device_arch = prop->major * 10 + prop->minor;
    p.max_smem_per_block = max_smem_per_block(*prop);

    if (!start_q.has_value()) return std::nullopt;
    p.tree_start_q = start_q->data_ptr<int>();
    p.tree_end_k = end_k->data_ptr<int>();
    at::Tensor scratch = at::empty({block_bounds_scratch_ints(p.shape.total_q, p.shape.total_k, p.shape.batch)},
                                   q.options().dtype(at::kInt));
    p.bounds = block_bounds_view(scratch.data_ptr<int>(), p.shape.total_q, p.shape.total_k, p.shape.batch);
    launch_block_bounds(p, scratch.data_ptr<int>(), at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return scratch;
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                                            const at::Tensor &cu_q, const at::Tensor &cu_k,
                                            const std::optional<at::Tensor> &start_q,
                                            const std::optional<at::Tensor> &end_k, int64_t max_seqlen_q,
                                            int64_t max_seqlen_k, double softmax_scale, bool causal,
                                            int64_t window_left, int64_t window_right, double softcap,
                                            bool /*deterministic: backward only*/, int64_t kernel_path) {
    c10::cuda::CUDAGuard guard(q.device());
    FwdParams p;
    auto scratch = fill_common(p, q, k, v, cu_q, cu_k, start_q, end_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                               causal, window_left, window_right, softcap);
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
    p.out = out.data_ptr();
    p.o_row_stride = out.stride(0);
    p.o_head_stride = out.stride(1);
    p.softmax_lse = lse.data_ptr<float>();
    // The persistent sm90 forward's item counter (sm90/fwd_kernel.h), zeroed for each call wherever the sm90 path
    // may run: by the bounds kernel on tree calls (kernel_api.h), by a fill otherwise.
    const KernelPath path = to_path(kernel_path);
    at::Tensor item_counter;
    if (p.device_arch == 90 && path != KernelPath::kSm80) {
        if (scratch.has_value()) {
            p.fwd_item_counter = block_bounds_counter(scratch->data_ptr<int>(), p.shape.total_q, p.shape.total_k,
                                                      p.shape.batch);
        } else {
            item_counter = at::zeros({1}, q.options().dtype(at::kInt));
            p.fwd_item_counter = item_counter.data_ptr<int>();
        }
    }
    if (q.size(0) > 0) {
        check_kernel_ran(run_fwd(p, path, at::cuda::getCurrentCUDAStream()), p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cuda(
    const at::Tensor &dout, const std::optional<at::Tensor> &dlse, const at::Tensor &q, const at::Tensor &k,
    const at::Tensor &v, const at::Tensor &out, const at::Tensor &lse, const at::Tensor &cu_q, const at::Tensor &cu_k,
    const std::optional<at::Tensor> &start_q, const std::optional<at::Tensor> &end_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool deterministic, int64_t kernel_path) {
    c10::cuda::CUDAGuard guard(q.device());
    BwdParams p;
    auto scratch = fill_common(p, q, k, v, cu_q, cu_k, start_q, end_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                               causal, window_left, window_right, softcap);
    FTA_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), "dout and out must be shaped like q");
    FTA_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "dout and out must have q's dtype");
    for (const at::Tensor *t : {&dout, &out}) {
        FTA_CHECK(t->stride(-1) == 1 && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0 &&
                      t->stride(0) % 8 == 0 && t->stride(1) % 8 == 0,
                  "dout and out need a contiguous last dim, a 16-byte aligned start and strides "
                  "that are multiples of 8 elements; got strides ", t->strides());
    }
    FTA_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 2 && lse.size(0) == q.size(1) &&
                  lse.size(1) == q.size(0) && lse.is_contiguous(),
              "softmax_lse must be a contiguous float32 (heads, tokens) tensor");
    at::Tensor dlse_c;
    if (dlse.has_value()) {
        dlse_c = dlse->to(at::kFloat).contiguous();
        FTA_CHECK(dlse_c.sizes() == lse.sizes(), "the LSE gradient must be shaped like softmax_lse");
        p.dsoftmax_lse = dlse_c.data_ptr<float>();
    }
    at::Tensor dq = at::empty_like(q);
    at::Tensor dk = at::empty_like(k);
    at::Tensor dv = at::empty_like(v);
    if (q.size(0) == 0 || k.size(0) == 0) {
        dq.zero_();
        dk.zero_();
        dv.zero_();
        return {dq, dk, dv};
    }
    const int bucket = head_dim_bucket(p.shape.head_dim);
    // Zeroed by the backward's first kernel, or written first by a store (bwd_prepost.h, params.h).
    at::Tensor dq_accum = at::empty({q.size(0), q.size(1), bucket}, q.options().dtype(at::kFloat));
    at::Tensor dsum = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
    // The dQ counters: the deterministic turns, or the first-store tickets; a few bytes per 64 query rows and head,
    // zeroed by the backward's first kernel.
    const int64_t m_blocks = (max_seqlen_q + bwd_block_m(bucket) - 1) / bwd_block_m(bucket);
    at::Tensor semaphore = at::empty({p.shape.batch, q.size(1), m_blocks}, q.options().dtype(at::kInt));
    p.dq_semaphore = semaphore.data_ptr<int>();
    p.dq_semaphore_ints = semaphore.numel();
    p.out = out.data_ptr();
    p.o_row_stride = out.stride(0);
    p.o_head_stride = out.stride(1);
    p.softmax_lse = lse.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.do_row_stride = dout.stride(0);
    p.do_head_stride = dout.stride(1);
    p.dq = dq.data_ptr();
    p.dq_row_stride = dq.stride(0);
    p.dq_head_stride = dq.stride(1);
    p.dk = dk.data_ptr();
    p.dk_row_stride = dk.stride(0);
    p.dk_head_stride = dk.stride(1);
    p.dv = dv.data_ptr();
    p.dv_row_stride = dv.stride(0);
    p.dv_head_stride = dv.stride(1);
    p.dq_accum = dq_accum.data_ptr<float>();
    p.dsoftmax_sum = dsum.data_ptr<float>();
    p.deterministic = deterministic;
    check_kernel_ran(run_bwd(p, to_path(kernel_path), at::cuda::getCurrentCUDAStream()), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dq, dk, dv};
}

// The ops as the dispatcher calls them, for the autograd kernel below: it passes them on to the CUDA kernels above
// or, for meta and fake tensors (shape inference, torch.compile), to the fake implementations of _ops.py.
using FwdOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
    const std::optional<at::Tensor> &, const std::optional<at::Tensor> &, c10::SymInt, c10::SymInt, double, bool,
    int64_t, int64_t, double, bool, int64_t);
using BwdOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor &, const std::optional<at::Tensor> &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
    const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, const std::optional<at::Tensor> &,
    const std::optional<at::Tensor> &, c10::SymInt, c10::SymInt, double, bool, int64_t, int64_t, double, bool, int64_t);

const c10::TypedOperatorHandle<FwdOp> &fwd_op() {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flash_tree_attn::fwd", "").typed<FwdOp>();
    return op;
}
const c10::TypedOperatorHandle<BwdOp> &bwd_op() {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flash_tree_attn::bwd", "").typed<BwdOp>();
    return op;
}

std::optional<at::Tensor> optional_tensor(const at::Tensor &t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The gradient of fwd is bwd. Written here in C++ because the same formula registered from Python
// (torch.library.register_autograd) added 0.1-0.3 ms of host time to each forward: every call went through Python,
// where torch rebuilt the schema's argument list once per argument to fill in defaults (bench_results/RESULTS.md,
// 2026-12-02). _ops.py registers the Python form only where this extension is not loaded (fake tensors on
// machines without it). Like that form, it does not support torch.func transforms.
class FwdFunction : public torch::autograd::Function<FwdFunction> {
   public:
    static torch::autograd::variable_list forward(
        torch::autograd::AutogradContext *ctx, const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
        const at::Tensor &cu_q, const at::Tensor &cu_k, const std::optional<at::Tensor> &start_q,
        const std::optional<at::Tensor> &end_k, c10::SymInt max_seqlen_q, c10::SymInt max_seqlen_k,
        double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
        bool deterministic, int64_t kernel_path) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        auto [out, lse] = fwd_op().call(q, k, v, cu_q, cu_k, start_q, end_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                                        causal, window_left, window_right, softcap, deterministic, kernel_path);
        ctx->save_for_backward({q, k, v, out, lse, cu_q, cu_k, start_q.value_or(at::Tensor()),
                                end_k.value_or(at::Tensor())});
        ctx->saved_data["max_seqlen_q"] = std::move(max_seqlen_q);
        ctx->saved_data["max_seqlen_k"] = std::move(max_seqlen_k);
        ctx->saved_data["softmax_scale"] = softmax_scale;
        ctx->saved_data["causal"] = causal;
        ctx->saved_data["window_left"] = window_left;
        ctx->saved_data["window_right"] = window_right;
        ctx->saved_data["softcap"] = softcap;
        ctx->saved_data["deterministic"] = deterministic;
        ctx->saved_data["kernel_path"] = kernel_path;
        ctx->set_materialize_grads(false);
        return {out, lse};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                   torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &out = saved[3];
        // No gradient for out (only the LSE is used): its gradient is zero. The kernels need 16-byte aligned rows;
        // contiguous() is a no-op for the usual contiguous gradient.
        const at::Tensor dout = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(out);
        const auto &d = ctx->saved_data;
        auto [dq, dk, dv] = bwd_op().call(
            dout, optional_tensor(grads[1]), saved[0], saved[1], saved[2], out, saved[4], saved[5], saved[6],
            optional_tensor(saved[7]), optional_tensor(saved[8]), d.at("max_seqlen_q").toSymInt(),
            d.at("max_seqlen_k").toSymInt(), d.at("softmax_scale").toDouble(), d.at("causal").toBool(),
            d.at("window_left").toInt(), d.at("window_right").toInt(), d.at("softcap").toDouble(),
            d.at("deterministic").toBool(), d.at("kernel_path").toInt());
        // One gradient per forward argument: q, k, v, then none for the 13 others.
        torch::autograd::variable_list grad_inputs(16);
        grad_inputs[0] = dq;
        grad_inputs[1] = dk;
        grad_inputs[2] = dv;
        return grad_inputs;
    }
};

std::tuple<at::Tensor, at::Tensor> fwd_autograd(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                                                const at::Tensor &cu_q, const at::Tensor &cu_k,
                                                const std::optional<at::Tensor> &start_q,
                                                const std::optional<at::Tensor> &end_k, c10::SymInt max_seqlen_q,
                                                c10::SymInt max_seqlen_k, double softmax_scale, bool causal,
                                                int64_t window_left, int64_t window_right, double softcap,
                                                bool deterministic, int64_t kernel_path) {
    auto outs = FwdFunction::apply(q, k, v, cu_q, cu_k, start_q, end_k, std::move(max_seqlen_q),
                                   std::move(max_seqlen_k), softmax_scale, causal, window_left, window_right, softcap,
                                   deterministic, kernel_path);
    return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(flash_tree_attn, CUDA, m) {
    m.impl("fwd", &fwd_cuda);
    m.impl("bwd", &bwd_cuda);
}

TORCH_LIBRARY_IMPL(flash_tree_attn, Autograd, m) { m.impl("fwd", &fwd_autograd); }

}  // namespace flash_tree_attn
