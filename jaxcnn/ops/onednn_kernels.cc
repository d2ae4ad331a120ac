// oneDNN's 2-D convolution passes as XLA FFI handlers on the CPU, for jaxcnn.ops.onednn, a handler
// that stores a value as it is (jaxcnn.ops.onednn.stored), and a 2-D max pool's two passes
// (jaxcnn.ops.onednn.max_pool; plain loops, not oneDNN's pooling, for jaxcnn's tie and NaN rules).
//
// Layouts are jaxcnn's: activations NHWC, kernels HWIO (I = C / groups), float32 or bfloat16 (all
// of one call's arrays alike; a bfloat16 weight gradient is accumulated in float32, rounded once).
// Each handler takes the window as one int64 array attribute
//   window = [stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
//             dilation_h, dilation_w, groups]   (dilation 1 = none, as in lax)
// and reads every other size off its buffers. A primitive is created once per
// (pass, geometry) and kept: creating one JIT-compiles its kernel (milliseconds).
// Activations stay NHWC (oneDNN's AVX-512 kernels read it, as PyTorch's
// channels-last does); the kernel or its gradient is reordered between HWIO and
// the blocked layout oneDNN picks, a copy of at most a few hundred KiB.
// Each call splits its batch into one chunk per thread of XLA's intra-op pool and
// runs oneDNN single-threaded on each, on the calling thread and on helpers it
// schedules on that pool (see run). Scratchpads are allocated per chunk (user
// mode), so concurrent calls share nothing mutable but the plan cache, which a
// mutex guards.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Pass : int64_t { kForward = 0, kGradInput = 1, kGradWeight = 2 };

struct Geometry {
  int64_t n, h, w, c;     // input, NHWC
  int64_t oh, ow, o;      // output, NHWC
  int64_t kh, kw;         // kernel taps
  ffi::Span<const int64_t> window;
  memory::data_type type;  // of every array: f32 or bf16

  std::vector<int64_t> key(Pass pass) const {
    std::vector<int64_t> k{pass, n, h, w, c, oh, ow, o, kh, kw, static_cast<int64_t>(type)};
    k.insert(k.end(), window.begin(), window.end());
    return k;
  }
  int64_t groups() const { return window[8]; }
};

struct Plan {
  dnnl::primitive primitive;
  memory::desc x_md, y_md;          // NHWC activations (x: input or dx, y: output or dy)
  memory::desc user_w_md, dnnl_w_md;  // HWIO as jaxcnn stores it; the layout oneDNN chose
  bool reorder_w = false;
  dnnl::reorder w_reorder;          // HWIO -> oneDNN's (forward, dx) or back (dW)
  memory::desc scratch_md;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// HWIO kernel as oneDNN's (O, I, KH, KW), or (G, O/G, I, KH, KW) when grouped, by strides.
memory::desc user_weights(const Geometry& g) {
  const int64_t groups = g.groups(), ig = g.c / groups, og = g.o / groups;
  const int64_t s_kh = g.kw * ig * g.o, s_kw = ig * g.o;
  if (groups == 1) return memory::desc({g.o, ig, g.kh, g.kw}, g.type, memory::dims{1, g.o, s_kh, s_kw});
  return memory::desc({groups, og, ig, g.kh, g.kw}, g.type, memory::dims{og, 1, g.o, s_kh, s_kw});
}

size_t element_size(memory::data_type type) { return type == memory::data_type::f32 ? 4 : 2; }

std::shared_ptr<Plan> make_plan(Pass pass, const Geometry& g) {
  auto& engine = cpu_engine();
  auto plan = std::make_shared<Plan>();
  plan->x_md = memory::desc({g.n, g.c, g.h, g.w}, g.type, memory::format_tag::nhwc);
  plan->y_md = memory::desc({g.n, g.o, g.oh, g.ow}, g.type, memory::format_tag::nhwc);
  plan->user_w_md = user_weights(g);
  const memory::desc any_w(plan->user_w_md.get_dims(), g.type, memory::format_tag::any);
  // dW in float32 whatever the type: the chunks' partial sums add up, and are rounded once, at the end.
  const memory::desc any_dw(plan->user_w_md.get_dims(), memory::data_type::f32, memory::format_tag::any);
  const auto& win = g.window;
  const memory::dims strides{win[0], win[1]}, pad_l{win[2], win[4]}, pad_r{win[3], win[5]};
  const memory::dims dilation{win[6] - 1, win[7] - 1};  // oneDNN counts the gaps
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto forward = dnnl::convolution_forward::primitive_desc(
      engine, dnnl::prop_kind::forward_training, algo, plan->x_md, any_w, plan->y_md, strides, dilation, pad_l,
      pad_r, attr);
  if (pass == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->dnnl_w_md = forward.weights_desc();
    plan->scratch_md = forward.scratchpad_desc();
  } else if (pass == kGradInput) {
    const auto backward = dnnl::convolution_backward_data::primitive_desc(
        engine, algo, plan->x_md, any_w, plan->y_md, strides, dilation, pad_l, pad_r, forward, attr);
    plan->primitive = dnnl::convolution_backward_data(backward);
    plan->dnnl_w_md = backward.weights_desc();
    plan->scratch_md = backward.scratchpad_desc();
  } else {
    const auto backward = dnnl::convolution_backward_weights::primitive_desc(
        engine, algo, plan->x_md, any_dw, plan->y_md, strides, dilation, pad_l, pad_r, forward, attr);
    plan->primitive = dnnl::convolution_backward_weights(backward);
    plan->dnnl_w_md = backward.diff_weights_desc();
    plan->scratch_md = backward.scratchpad_desc();
  }
  plan->reorder_w = plan->dnnl_w_md != plan->user_w_md;
  if (plan->reorder_w) {
    const bool into_dnnl = pass != kGradWeight;
    plan->w_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        engine, into_dnnl ? plan->user_w_md : plan->dnnl_w_md, engine,
        into_dnnl ? plan->dnnl_w_md : plan->user_w_md));
  }
  return plan;
}

std::shared_ptr<Plan> plan_for(Pass pass, const Geometry& g) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::shared_ptr<Plan>> plans;
  const auto key = g.key(pass);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found != plans.end()) return found->second;
  auto plan = make_plan(pass, g);
  plans.emplace(key, plan);
  return plan;
}

extern "C" void omp_set_num_threads(int);  // libgomp's: libdnnl's OpenMP runtime
extern "C" int omp_get_max_threads();

// oneDNN single-threaded on this thread while in scope: it runs inline, with no OpenMP team of its
// own. The thread's own setting is restored after, since the caller may be the user's thread (JAX
// runs CPU computations inline), where other OpenMP code (PyTorch's, say) reads it.
class SingleThreadedOmp {
 public:
  SingleThreadedOmp() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreadedOmp() { omp_set_num_threads(saved_); }
  SingleThreadedOmp(const SingleThreadedOmp&) = delete;
  SingleThreadedOmp& operator=(const SingleThreadedOmp&) = delete;

 private:
  int saved_;
};

// One pass over examples [begin, begin + count) on the calling thread. x: the input (forward, dW)
// or dx (dx); y: the output (forward) or dy (dx, dW); w: the kernel (forward, dx) or this chunk's
// dW, in the layout oneDNN picked (plan->dnnl_w_md).
void run_chunk(Pass pass, Geometry g, int64_t begin, int64_t count, char* x, char* y, void* w) {
  SingleThreadedOmp single_threaded;
  const size_t bytes = element_size(g.type);
  const size_t x_offset = begin * g.h * g.w * g.c * bytes, y_offset = begin * g.oh * g.ow * g.o * bytes;
  g.n = count;
  const auto plan = plan_for(pass, g);
  auto& engine = cpu_engine();
  dnnl::stream stream(engine);
  memory x_mem(plan->x_md, engine, x + x_offset), y_mem(plan->y_md, engine, y + y_offset);
  memory w_mem(plan->dnnl_w_md, engine, w), scratch(plan->scratch_md, engine);
  if (pass == kForward)
    plan->primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                     {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
  else if (pass == kGradInput)
    plan->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                     {DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
  else
    plan->primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, y_mem},
                                     {DNNL_ARG_DIFF_WEIGHTS, w_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
  stream.wait();
}

// The chunks of one call, each claimed once by whichever thread gets to it first.
struct Chunks {
  int64_t total = 0;
  std::function<void(int64_t)> run;  // chunk i; only called while the caller waits, so it may hold references
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::condition_variable all_finished;
  int64_t finished = 0;
  std::string error;
};

// Claims and runs chunks until none is left; the shared state outlives a helper that starts late.
void work(const std::shared_ptr<Chunks>& chunks) {
  Chunks& c = *chunks;
  for (int64_t i; (i = c.next.fetch_add(1)) < c.total;) {
    std::string error;
    try {
      c.run(i);
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.error.empty()) c.error = error;
    if (++c.finished == c.total) c.all_finished.notify_all();
  }
}

// Runs chunks 0..total-1 on the calling thread and on helpers scheduled on XLA's intra-op pool, each
// chunk single-threaded; returns the first chunk's error message, or "". A chunk no helper has claimed
// yet is simply run by the caller, so a call never waits on a busy pool.
std::string run_chunks(ffi::ThreadPool& pool, int64_t total, std::function<void(int64_t)> run) {
  auto chunks = std::make_shared<Chunks>();
  chunks->total = total;
  chunks->run = std::move(run);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  for (int64_t h = 1; h < std::min(threads, total); ++h) pool.Schedule([chunks] { work(chunks); });
  work(chunks);
  std::unique_lock<std::mutex> lock(chunks->mutex);
  chunks->all_finished.wait(lock, [&] { return chunks->finished == chunks->total; });
  return chunks->error;
}

// First example of chunk i of total over a batch of n: every chunk holds n / total or one more.
int64_t chunk_begin(int64_t n, int64_t i, int64_t total) { return n * i / total; }

// How many chunks to split the batch into: one per thread of XLA's pool, if every chunk's plan keeps
// the kernel (or dW) in one layout, so that one reordered kernel serves all and partial dWs add up.
int64_t chunk_count(Pass pass, const Geometry& g, int64_t threads) {
  const int64_t total = std::max<int64_t>(1, std::min(g.n, threads));
  Geometry small = g, large = g;  // chunk_begin makes every chunk one of two sizes
  small.n = g.n / total;
  large.n = (g.n + total - 1) / total;
  return plan_for(pass, small)->dnnl_w_md == plan_for(pass, large)->dnnl_w_md ? total : 1;
}

// One pass, its batch split into chunks run single-threaded by the calling thread and by helpers
// scheduled on XLA's intra-op pool: oneDNN's own OpenMP team would compete for the cores with the
// XLA thunks running beside it (GoogLeNet's step: 1.19-1.25x slower), while a chunk no helper has
// claimed yet is simply run by the caller. dW sums the chunks' partial gradients. Alone, a call
// whose kernel outweighs its activations runs slower this way (every chunk reads the whole kernel,
// or writes a whole dW: 512->512 3x3 at 2x2, dW 2.2x, forward 1.5x), but leaving those calls to
// oneDNN's team made ResNet-50's and GoogLeNet's steps slower, not faster.
ffi::Error run(ffi::ThreadPool& pool, Pass pass, Geometry g, void* x_data, void* y_data, void* w) {
  char *x = static_cast<char*>(x_data), *y = static_cast<char*>(y_data);
  if (g.window.size() != 9 || g.groups() < 1 || g.c % g.groups() || g.o % g.groups())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn onednn: bad window attribute");
  try {
    SingleThreadedOmp single_threaded;  // plans are created for the one thread that runs each chunk
    const int64_t total = chunk_count(pass, g, std::max<int64_t>(1, pool.num_threads()));
    Geometry first = g;
    first.n = chunk_begin(g.n, 1, total);
    const auto plan = plan_for(pass, first);
    auto& engine = cpu_engine();
    dnnl::stream stream(engine);
    memory user_w(plan->user_w_md, engine, w);
    // The kernel in oneDNN's layout (forward, dx), or one float32 dW per chunk (the first in w if
    // unreordered, which a float32 call's may be).
    std::vector<memory> buffers;
    std::vector<void*> weights(total, w);
    for (int64_t i = 0; i < (pass == kGradWeight ? total : 1); ++i) {
      if (!plan->reorder_w && i == 0) continue;
      buffers.emplace_back(plan->dnnl_w_md, engine);
      weights[i] = buffers.back().get_data_handle();
    }
    if (pass != kGradWeight && plan->reorder_w) {
      memory dnnl_w(plan->dnnl_w_md, engine, weights[0]);
      plan->w_reorder.execute(stream, user_w, dnnl_w);
      stream.wait();
      std::fill(weights.begin(), weights.end(), weights[0]);
    }
    const std::string error = run_chunks(pool, total, [&](int64_t i) {
      const int64_t begin = chunk_begin(g.n, i, total);
      run_chunk(pass, g, begin, chunk_begin(g.n, i + 1, total) - begin, x, y, weights[i]);
    });
    if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "jaxcnn onednn: " + error);
    if (pass == kGradWeight) {
      const size_t size = plan->dnnl_w_md.get_size() / sizeof(float);
      float* sum = static_cast<float*>(weights[0]);
      for (int64_t i = 1; i < total; ++i) {
        const float* part = static_cast<const float*>(weights[i]);
        for (size_t k = 0; k < size; ++k) sum[k] += part[k];
      }
      if (plan->reorder_w) {
        memory dnnl_w(plan->dnnl_w_md, engine, weights[0]);
        plan->w_reorder.execute(stream, dnnl_w, user_w);
        stream.wait();
      }
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxcnn onednn: ") + e.what());
  }
  return ffi::Error::Success();
}

using Any = ffi::AnyBuffer;
using AnyOut = ffi::Result<ffi::AnyBuffer>;
using Window = ffi::Span<const int64_t>;

// A convolution pass's geometry from its input-side array x (x or dx), its kernel-side array w (w or dW)
// and its output-side array y (y or dy), each 4-D and all float32 or all bfloat16; else an error.
ffi::Error conv_geometry(const Any& x, const Any& w, const Any& y, Window window, Geometry* g) {
  for (const Any* a : {&x, &w, &y})
    if (a->dimensions().size() != 4)
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn onednn: arrays must be 4-D");
  const auto type = x.element_type();
  if (w.element_type() != type || y.element_type() != type || (type != ffi::F32 && type != ffi::BF16))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn onednn: arrays must be all float32 or all bfloat16");
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], window,
                type == ffi::F32 ? memory::data_type::f32 : memory::data_type::bf16};
  return ffi::Error::Success();
}

ffi::Error forward(ffi::ThreadPool pool, Any x, Any w, AnyOut y, Window window) {
  Geometry g;
  if (auto error = conv_geometry(x, w, *y, window, &g); error.failure()) return error;
  return run(pool, kForward, g, x.untyped_data(), y->untyped_data(), w.untyped_data());
}

ffi::Error grad_input(ffi::ThreadPool pool, Any dy, Any w, AnyOut dx, Window window) {
  Geometry g;
  if (auto error = conv_geometry(*dx, w, dy, window, &g); error.failure()) return error;
  return run(pool, kGradInput, g, dx->untyped_data(), dy.untyped_data(), w.untyped_data());
}

ffi::Error grad_weight(ffi::ThreadPool pool, Any x, Any dy, AnyOut dw, Window window) {
  Geometry g;
  if (auto error = conv_geometry(x, *dw, dy, window, &g); error.failure()) return error;
  return run(pool, kGradWeight, g, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

// The output aliases the input (input_output_aliases), so there is nothing to do: the call only
// keeps XLA from fusing the producer into the value's consumers. Copies where not aliased.
ffi::Error stored(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.untyped_data() != y->untyped_data()) std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}

// --- max pooling, NHWC float32 or bfloat16 -------------------------------------------------------
// window = [kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
//           dilation_h, dilation_w]. Padding reads as -inf. Each output is its window's maximum (NaN
// if the window holds one), and the index of the tap it came from: the first tap equal to the
// maximum, or the first NaN, in row-major window order, as jaxcnn.ops.max_pool2d's gradient picks.

struct PoolGeometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw;

  PoolGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out, ffi::Span<const int64_t> win)
      : n(in[0]), h(in[1]), w(in[2]), c(in[3]), oh(out[1]), ow(out[2]), kh(win[0]), kw(win[1]), sh(win[2]),
        sw(win[3]), pt(win[4]), pl(win[6]), dh(win[8]), dw(win[9]) {}

  // The input pixel of tap (a, b) of output (i, j), or -1 where it falls in the padding.
  int64_t pixel(int64_t example, int64_t i, int64_t j, int64_t a, int64_t b) const {
    const int64_t r = i * sh - pt + a * dh, s = j * sw - pl + b * dw;
    return r < 0 || r >= h || s < 0 || s >= w ? -1 : (example * h + r) * w + s;
  }
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JAXCNN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXCNN_VECTOR_CLONES
#endif

// bfloat16 values are stored as their 16 bits (the high half of a float32's).
using bf16_bits = uint16_t;
inline float to_float(float v) { return v; }
inline float to_float(bf16_bits v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// float32 -> bfloat16, rounded to nearest even (NaN stays a quiet NaN), as XLA converts.
inline bf16_bits to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_bits>((bits >> 16) | 0x40u);
  return static_cast<bf16_bits>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <typename T> T minus_infinity();
template <> float minus_infinity<float>() { return -std::numeric_limits<float>::infinity(); }
template <> bf16_bits minus_infinity<bf16_bits>() { return 0xff80u; }

// y, index = the running maximum and its tap, updated with tap `tap` (values x) over c channels; the
// maximum is one of the values, copied. Bitwise, branch-free: so that the compiler vectorizes it.
template <typename T>
JAXCNN_VECTOR_CLONES void take_larger(int64_t c, const T* __restrict x, T* __restrict y, uint8_t* __restrict index,
                                      uint8_t tap) {
  for (int64_t k = 0; k < c; ++k) {
    const float v = to_float(x[k]), m = to_float(y[k]);
    const bool take = (v > m) | ((v != v) & (m == m));  // larger, or the first NaN
    y[k] = take ? x[k] : y[k];
    index[k] = take ? tap : index[k];
  }
}

// dx += dy where the window's maximum came from tap `tap`, over c channels (dx in float32 whatever dy's type).
template <typename T>
JAXCNN_VECTOR_CLONES void add_where_tap(int64_t c, const T* __restrict dy, const uint8_t* __restrict index,
                                        float* __restrict dx, uint8_t tap) {
  for (int64_t k = 0; k < c; ++k) dx[k] += index[k] == tap ? to_float(dy[k]) : 0.0f;
}

// visit(out, tap, pixel) for each output of examples [begin, end) (out: its offset in values) and each
// tap of its window in row-major order (pixel: the input pixel, or -1 in the padding).
template <typename Visit>
void for_each_tap(const PoolGeometry& g, int64_t begin, int64_t end, Visit visit) {
  for (int64_t e = begin; e < end; ++e)
    for (int64_t i = 0; i < g.oh; ++i)
      for (int64_t j = 0; j < g.ow; ++j) {
        const int64_t out = ((e * g.oh + i) * g.ow + j) * g.c;
        for (int64_t a = 0, tap = 0; a < g.kh; ++a)
          for (int64_t b = 0; b < g.kw; ++b, ++tap) visit(out, tap, g.pixel(e, i, j, a, b));
      }
}

template <typename T>
void max_pool_examples(const PoolGeometry& g, int64_t begin, int64_t end, const T* x, T* y, uint8_t* index) {
  for_each_tap(g, begin, end, [&](int64_t out, int64_t tap, int64_t pixel) {
    if (tap == 0) {  // the first tap starts the maximum, padding (-inf) included
      if (pixel < 0) std::fill(y + out, y + out + g.c, minus_infinity<T>());
      else std::memcpy(y + out, x + pixel * g.c, g.c * sizeof(T));
      std::fill(index + out, index + out + g.c, uint8_t{0});
    } else if (pixel >= 0) {  // a padding tap (-inf) never beats the maximum
      take_larger(g.c, x + pixel * g.c, y + out, index + out, static_cast<uint8_t>(tap));
    }
  });
}

// The float32 dx of examples [begin, end), into `sums` (those examples' values only).
template <typename T>
void pool_grad_sums(const PoolGeometry& g, int64_t begin, int64_t end, const T* dy, const uint8_t* index,
                    float* sums) {
  const int64_t first_pixel = begin * g.h * g.w;
  std::memset(sums, 0, (end - begin) * g.h * g.w * g.c * sizeof(float));
  for_each_tap(g, begin, end, [&](int64_t out, int64_t tap, int64_t pixel) {
    if (pixel >= 0)
      add_where_tap(g.c, dy + out, index + out, sums + (pixel - first_pixel) * g.c, static_cast<uint8_t>(tap));
  });
}

void max_pool_grad_examples(const PoolGeometry& g, int64_t begin, int64_t end, const float* dy, const uint8_t* index,
                            float* dx) {
  pool_grad_sums(g, begin, end, dy, index, dx + begin * g.h * g.w * g.c);
}

// bfloat16: each dx value summed in float32 and rounded once.
void max_pool_grad_examples(const PoolGeometry& g, int64_t begin, int64_t end, const bf16_bits* dy,
                            const uint8_t* index, bf16_bits* dx) {
  const int64_t first = begin * g.h * g.w * g.c, count = (end - begin) * g.h * g.w * g.c;
  std::unique_ptr<float[]> sums(new float[count]);  // uninitialised: pool_grad_sums zeroes it
  pool_grad_sums(g, begin, end, dy, index, sums.get());
  for (int64_t k = 0; k < count; ++k) dx[first + k] = to_bfloat16(sums[k]);
}

ffi::Error check_pool_window(Window window) {
  if (window.size() != 10 || window[0] * window[1] > 256)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn max pool: bad window attribute");
  return ffi::Error::Success();
}

// `examples(begin, end)` over the batch, one chunk per thread of XLA's pool (each example is independent).
template <typename Examples>
ffi::Error over_batch(ffi::ThreadPool& pool, int64_t n, Examples examples) {
  const int64_t total = std::max<int64_t>(1, std::min<int64_t>(n, pool.num_threads()));
  const std::string error = run_chunks(pool, total, [&](int64_t i) {
    examples(chunk_begin(n, i, total), chunk_begin(n, i + 1, total));
  });
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "jaxcnn max pool: " + error);
  return ffi::Error::Success();
}

using U8 = ffi::Buffer<ffi::U8, 4>;
using U8Out = ffi::ResultBuffer<ffi::U8, 4>;

// The pool's arrays (x or dx, y or dy) are 4-D and both float32 or both bfloat16.
ffi::Error check_pool_arrays(const Any& a, const Any& b) {
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 || a.element_type() != b.element_type() ||
      (a.element_type() != ffi::F32 && a.element_type() != ffi::BF16))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn max pool: arrays must be 4-D, float32 or bfloat16");
  return ffi::Error::Success();
}

template <typename T>
ffi::Error max_pool_typed(ffi::ThreadPool& pool, const PoolGeometry& g, const void* x, void* y, uint8_t* index) {
  const T* xs = static_cast<const T*>(x);
  T* ys = static_cast<T*>(y);
  return over_batch(pool, g.n, [&](int64_t begin, int64_t end) { max_pool_examples(g, begin, end, xs, ys, index); });
}

ffi::Error max_pool(ffi::ThreadPool pool, Any x, AnyOut y, U8Out index, Window window) {
  if (auto error = check_pool_window(window); error.failure()) return error;
  if (auto error = check_pool_arrays(x, *y); error.failure()) return error;
  const PoolGeometry g(x.dimensions(), y->dimensions(), window);
  if (x.element_type() == ffi::F32)
    return max_pool_typed<float>(pool, g, x.untyped_data(), y->untyped_data(), index->typed_data());
  return max_pool_typed<bf16_bits>(pool, g, x.untyped_data(), y->untyped_data(), index->typed_data());
}

template <typename T>
ffi::Error max_pool_grad_typed(ffi::ThreadPool& pool, const PoolGeometry& g, const void* dy, const uint8_t* index,
                               void* dx) {
  const T* dys = static_cast<const T*>(dy);
  T* dxs = static_cast<T*>(dx);
  return over_batch(pool, g.n, [&](int64_t begin, int64_t end) {
    max_pool_grad_examples(g, begin, end, dys, index, dxs);
  });
}

ffi::Error max_pool_grad(ffi::ThreadPool pool, Any dy, U8 index, AnyOut dx, Window window) {
  if (auto error = check_pool_window(window); error.failure()) return error;
  if (auto error = check_pool_arrays(*dx, dy); error.failure()) return error;
  const PoolGeometry g(dx->dimensions(), dy.dimensions(), window);
  if (dy.element_type() == ffi::F32)
    return max_pool_grad_typed<float>(pool, g, dy.untyped_data(), index.typed_data(), dx->untyped_data());
  return max_pool_grad_typed<bf16_bits>(pool, g, dy.untyped_data(), index.typed_data(), dx->untyped_data());
}


// --- per-channel sums for BatchNorm, channels-last float32 or bfloat16 ---------------------------
// An array (..., C) is M = size / C rows of C channels. moments: (sum x, sum x^2) per channel; grad
// sums: (sum dy, sum dy * (x - mean)) per channel; both float32 (2, C). The loops run over rows of
// about 128 values (k rows of C side by side, so that they vectorize for any C), one chunk of rows
// per thread of XLA's pool; each block of kBlockRows such rows is summed in float32 and added into
// float64 totals, so the result is the float32 rounding of nearly the exact sum. XLA:CPU cannot fuse
// a conversion or a square into the first stage of its tree reductions, so its own sums first wrote a
// float32 copy of every summand.

constexpr int64_t kSumRow = 128;    // values per row of the accumulators
constexpr int64_t kBlockRows = 32;  // rows summed in float32 before they are added to the float64 totals

template <typename T>
JAXCNN_VECTOR_CLONES void add_moments(int64_t width, const T* __restrict x, float* __restrict sum,
                                      float* __restrict sum_sq) {
  for (int64_t j = 0; j < width; ++j) {
    const float v = to_float(x[j]);
    sum[j] += v;
    sum_sq[j] += v * v;
  }
}

template <typename T>
JAXCNN_VECTOR_CLONES void add_grad_sums(int64_t width, const T* __restrict dy, const T* __restrict x,
                                        const float* __restrict mean, float* __restrict sum,
                                        float* __restrict sum_centred) {
  for (int64_t j = 0; j < width; ++j) {
    const float d = to_float(dy[j]);
    sum[j] += d;
    sum_centred[j] += d * (to_float(x[j]) - mean[j]);
  }
}

// The same sums for BatchNorm followed by a ReLU, whose dy is g where the ReLU passed its input and 0
// elsewhere: the mask is recomputed from x ((x - mean) * mul + bias > 0, as the forward computed the
// ReLU's input), so the masked dy is never stored.
template <typename T>
JAXCNN_VECTOR_CLONES void add_relu_grad_sums(int64_t width, const T* __restrict g, const T* __restrict x,
                                             const float* __restrict mean, const float* __restrict mul,
                                             const float* __restrict bias, float* __restrict sum,
                                             float* __restrict sum_centred) {
  for (int64_t j = 0; j < width; ++j) {
    const float centred = to_float(x[j]) - mean[j], gradient = to_float(g[j]);  // both loaded: a select vectorizes
    const float d = centred * mul[j] + bias[j] > 0.0f ? gradient : 0.0f;
    sum[j] += d;
    sum_centred[j] += d * centred;
  }
}

// add(first, width, sums, second_sums) over the M rows of c channels, as rows of width = k * c values
// (k >= 1 with k * c <= kSumRow; the last M % k rows alone), one chunk per thread; writes the
// per-channel totals, rounded to float32, into out (2, c).
template <typename Add>
ffi::Error channel_sums(ffi::ThreadPool& pool, int64_t m, int64_t c, float* out, Add add) {
  const int64_t k = std::max<int64_t>(1, kSumRow / std::max<int64_t>(c, 1)), width = k * c;
  const int64_t wide_rows = m / k, tail = m % k;
  const int64_t total = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), wide_rows / 64));
  std::vector<double> totals(total * 2 * width, 0.0);
  const std::string error = run_chunks(pool, total, [&](int64_t i) {
    double* chunk_totals = totals.data() + i * 2 * width;
    std::vector<float> block(2 * width);
    auto flush = [&] {
      for (int64_t j = 0; j < 2 * width; ++j) chunk_totals[j] += block[j];
      std::fill(block.begin(), block.end(), 0.0f);
    };
    flush();
    const int64_t begin = chunk_begin(wide_rows, i, total), end = chunk_begin(wide_rows, i + 1, total);
    for (int64_t r = begin; r < end; ++r) {
      add(r * width, width, block.data(), block.data() + width);
      if ((r - begin + 1) % kBlockRows == 0) flush();
    }
    if (i == total - 1)
      for (int64_t r = 0; r < tail; ++r) add(wide_rows * width + r * c, c, block.data(), block.data() + width);
    flush();
  });
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "jaxcnn channel sums: " + error);
  for (int64_t s = 0; s < 2; ++s)
    for (int64_t ch = 0; ch < c; ++ch) {
      double t = 0;
      for (int64_t i = 0; i < total; ++i)
        for (int64_t b = 0; b < k; ++b) t += totals[(i * 2 + s) * width + b * c + ch];
      out[s * c + ch] = static_cast<float>(t);
    }
  return ffi::Error::Success();
}

using Sums = ffi::Buffer<ffi::F32, 2>;
using SumsOut = ffi::ResultBuffer<ffi::F32, 2>;
using Mean = ffi::Buffer<ffi::F32, 1>;

// The summed arrays: at least 1-D, float32 or bfloat16, and out (2, C) for their C = last dimension.
ffi::Error check_summed(const Any& a, SumsOut& out) {
  const auto dims = a.dimensions();
  if (dims.size() == 0 || (a.element_type() != ffi::F32 && a.element_type() != ffi::BF16))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn channel sums: arrays must be float32 or bfloat16");
  if (out->dimensions()[0] != 2 || out->dimensions()[1] != dims.back())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn channel sums: the result must be (2, C)");
  return ffi::Error::Success();
}

template <typename T>
ffi::Error channel_moments_typed(ffi::ThreadPool& pool, const Any& x, SumsOut& out) {
  const int64_t c = x.dimensions().back(), m = c ? x.element_count() / c : 0;
  const T* xs = static_cast<const T*>(x.untyped_data());
  return channel_sums(pool, m, c, out->typed_data(), [&](int64_t first, int64_t width, float* s, float* s2) {
    add_moments(width, xs + first, s, s2);
  });
}

ffi::Error channel_moments(ffi::ThreadPool pool, Any x, SumsOut out) {
  if (auto error = check_summed(x, out); error.failure()) return error;
  if (x.element_type() == ffi::F32) return channel_moments_typed<float>(pool, x, out);
  return channel_moments_typed<bf16_bits>(pool, x, out);
}

// rows per-channel rows of c values (rows x c, row-major), each repeated across channel_sums' wide row:
// rows x width values, width = k * c.
std::vector<float> wide_rows(const float* per_channel, int64_t rows, int64_t c) {
  const int64_t width = std::max<int64_t>(1, kSumRow / std::max<int64_t>(c, 1)) * c;
  std::vector<float> wide(rows * width);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j) wide[r * width + j] = per_channel[r * c + j % c];
  return wide;
}

template <typename T>
ffi::Error channel_grad_sums_typed(ffi::ThreadPool& pool, const Any& dy, const Any& x, const float* mean,
                                   SumsOut& out) {
  const int64_t c = x.dimensions().back(), m = c ? x.element_count() / c : 0;
  const T* dys = static_cast<const T*>(dy.untyped_data());
  const T* xs = static_cast<const T*>(x.untyped_data());
  const std::vector<float> wide_mean = wide_rows(mean, 1, c);
  return channel_sums(pool, m, c, out->typed_data(), [&](int64_t first, int64_t width, float* s, float* s2) {
    add_grad_sums(width, dys + first, xs + first, wide_mean.data(), s, s2);
  });
}

ffi::Error channel_grad_sums(ffi::ThreadPool pool, Any dy, Any x, Mean mean, SumsOut out) {
  if (auto error = check_summed(x, out); error.failure()) return error;
  if (dy.element_type() != x.element_type() || dy.element_count() != x.element_count() ||
      mean.element_count() != x.dimensions().back())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxcnn channel sums: dy must have x's shape and dtype, mean x's channels");
  if (x.element_type() == ffi::F32) return channel_grad_sums_typed<float>(pool, dy, x, mean.typed_data(), out);
  return channel_grad_sums_typed<bf16_bits>(pool, dy, x, mean.typed_data(), out);
}

template <typename T>
ffi::Error channel_relu_grad_sums_typed(ffi::ThreadPool& pool, const Any& g, const Any& x, const float* params,
                                        SumsOut& out) {
  const int64_t c = x.dimensions().back(), m = c ? x.element_count() / c : 0;
  const T* gs = static_cast<const T*>(g.untyped_data());
  const T* xs = static_cast<const T*>(x.untyped_data());
  const std::vector<float> wide = wide_rows(params, 3, c);  // mean, mul, bias
  const int64_t width = static_cast<int64_t>(wide.size()) / 3;
  return channel_sums(pool, m, c, out->typed_data(), [&](int64_t first, int64_t w, float* s, float* s2) {
    add_relu_grad_sums(w, gs + first, xs + first, wide.data(), wide.data() + width, wide.data() + 2 * width, s,
                       s2);
  });
}

ffi::Error channel_relu_grad_sums(ffi::ThreadPool pool, Any g, Any x, Sums params, SumsOut out) {
  if (auto error = check_summed(x, out); error.failure()) return error;
  if (g.element_type() != x.element_type() || g.element_count() != x.element_count() ||
      params.dimensions()[0] != 3 || params.dimensions()[1] != x.dimensions().back())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxcnn channel sums: g must have x's shape and dtype, params (3, C) for x's C channels");
  if (x.element_type() == ffi::F32) return channel_relu_grad_sums_typed<float>(pool, g, x, params.typed_data(), out);
  return channel_relu_grad_sums_typed<bf16_bits>(pool, g, x, params.typed_data(), out);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnForward, forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<Any>().Ret<Any>().Attr<Window>("window"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnGradInput, grad_input,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<Any>().Ret<Any>().Attr<Window>("window"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnGradWeight, grad_weight,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<Any>().Ret<Any>().Attr<Window>("window"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnStored, stored, ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnMaxPool, max_pool,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Ret<Any>().Ret<U8>().Attr<Window>("window"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnMaxPoolGrad, max_pool_grad,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<U8>().Ret<Any>().Attr<Window>("window"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnChannelMoments, channel_moments,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Ret<Sums>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnChannelGradSums, channel_grad_sums,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<Any>().Arg<Mean>().Ret<Sums>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnChannelReluGradSums, channel_relu_grad_sums,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Any>().Arg<Any>().Arg<Sums>().Ret<Sums>());
