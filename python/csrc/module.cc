// The only pybind11 file: converts Python/numpy types and calls into native/ and runtime/.
// No logic lives here beyond argument checks; compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "lutllm/kernels.h"
#include "error.h"
#include "model.h"
#include "flash_ffn.h"  // flash-backed weights block
#include "flash_io.h"   // flash-backed weights block
#include "thread_pool.h"

namespace py = pybind11;
using namespace lutllm;

namespace {

using U8Array = py::array_t<uint8_t, py::array::c_style>;
using F32Array = py::array_t<float, py::array::c_style>;

// Accept only arrays that already have the right dtype and are contiguous: no silent copies.
template <typename T>
py::array_t<T, py::array::c_style> exact_array(const py::handle& obj, const char* what) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(what) + ": expected a numpy array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(what) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(what) + ": array must be C-contiguous");
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(arr);
}

const KernelInfo& kernel_by_name(const std::string& name, KernelOp op) {
  const KernelInfo* k = find_kernel(name);
  if (!k) throw py::value_error("unknown kernel '" + name + "'");
  if (k->op != op) throw py::value_error("kernel '" + name + "' is a " + op_name(k->op) + " kernel, not " + op_name(op));
  if (!isa_supported(k->isa))
    throw py::value_error("kernel '" + name + "' needs ISA " + isa_name(k->isa) + ", which this CPU lacks");
  return *k;
}

size_t row_bytes_for(int wtype, int64_t k) {
  const TypeTraits& tt = type_traits(uint32_t(wtype));
  if (tt.block_bytes == 0) throw py::value_error("unsupported tensor type id " + std::to_string(wtype));
  if (k <= 0 || k % tt.block_elems != 0)
    throw py::value_error(std::string("row length ") + std::to_string(k) + " is not a multiple of the " + tt.name +
                          " block size " + std::to_string(tt.block_elems));
  return size_t(k / tt.block_elems) * size_t(tt.block_bytes);
}

// ---- kernel entry points for tests and benchmarks (call one named registry kernel) ----------

py::array_t<float> run_dequant(const std::string& name, const py::handle& src_obj, int64_t n) {
  const KernelInfo& k = kernel_by_name(name, KernelOp::DEQUANT);
  auto src = exact_array<uint8_t>(src_obj, "src");
  const size_t need = row_bytes_for(k.wtype, n);
  if (size_t(src.size()) < need)
    throw py::value_error("src holds " + std::to_string(src.size()) + " bytes, " + std::to_string(need) + " needed");
  py::array_t<float> out(n);
  const uint8_t* s = src.data();
  float* d = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    reinterpret_cast<DequantRowFn>(k.fn)(s, d, n);
  }
  return out;
}

// One query head against an fp16 cache: q (hd,) float32; k, v (len, stride) uint16 holding fp16 bits,
// the head's hd values at the start of each row. Returns out (hd,).
py::array_t<float> run_attn_head(const std::string& name, const py::handle& q_obj, const py::handle& k_obj,
                                 const py::handle& v_obj, float scale) {
  const KernelInfo& kinfo = kernel_by_name(name, KernelOp::ATTN_HEAD);
  auto q = exact_array<float>(q_obj, "q");
  auto k = exact_array<uint16_t>(k_obj, "k");
  auto v = exact_array<uint16_t>(v_obj, "v");
  if (q.ndim() != 1 || q.shape(0) <= 0) throw py::value_error("q must be a non-empty 1-D array");
  if (k.ndim() != 2 || v.ndim() != 2 || k.shape(0) != v.shape(0) || k.shape(1) != v.shape(1) || k.shape(0) <= 0)
    throw py::value_error("k and v must be 2-D arrays of the same shape (len, stride), len >= 1");
  const int hd = int(q.shape(0));
  if (k.shape(1) < hd) throw py::value_error("k/v rows are shorter than q");
  const int64_t len = k.shape(0), stride = k.shape(1);
  py::array_t<float> out(hd);
  std::vector<float> scores(static_cast<size_t>(len));
  const float* qp = q.data();
  const fp16_t* kp = k.data();
  const fp16_t* vp = v.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    reinterpret_cast<AttnHeadFn>(kinfo.fn)(qp, kp, vp, len, stride, hd, scale, scores.data(), op);
  }
  return out;
}

// a, b: 1-D float32 of one length -> silu(a) * b by the named SILU_MUL kernel (a new array)
py::array_t<float> run_silu_mul(const std::string& name, const py::handle& a_obj, const py::handle& b_obj) {
  const KernelInfo& kinfo = kernel_by_name(name, KernelOp::SILU_MUL);
  auto a = exact_array<float>(a_obj, "a");
  auto b = exact_array<float>(b_obj, "b");
  if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
    throw py::value_error("a and b must be 1-D arrays of the same length");
  const int64_t n = a.shape(0);
  py::array_t<float> out(n);
  float* op = out.mutable_data();
  std::copy(a.data(), a.data() + n, op);
  const float* bp = b.data();
  {
    py::gil_scoped_release nogil;
    reinterpret_cast<SiluMulFn>(kinfo.fn)(op, bp, n);
  }
  return out;
}

// x: (n_tok, k) float32 -> bytes of n_tok * k/32 ActQ8 blocks
py::array_t<uint8_t> run_quantize_act(const std::string& name, const py::handle& x_obj) {
  const KernelInfo& kn = kernel_by_name(name, KernelOp::QUANT_ACT);
  auto x = exact_array<float>(x_obj, "x");
  if (x.ndim() != 2) throw py::value_error("x must be 2-D (n_tok, k)");
  const int64_t n = x.shape(0), k = x.shape(1);
  if (k % QK32) throw py::value_error("k must be a multiple of 32");
  py::array_t<uint8_t> out({n, k / QK32 * int64_t(sizeof(ActQ8))});
  const float* xp = x.data();
  auto* yp = reinterpret_cast<ActQ8*>(out.mutable_data());
  {
    py::gil_scoped_release nogil;
    for (int64_t t = 0; t < n; ++t) reinterpret_cast<QuantizeActFn>(kn.fn)(xp + t * k, yp + t * (k / QK32), k);
  }
  return out;
}

// w: rows * row_bytes bytes; xq: (n_tok, k/32 * 40) ActQ8 bytes -> (n_tok, rows) float32
py::array_t<float> run_matmul_q8(const std::string& name, const py::handle& w_obj, int64_t rows, int64_t k,
                                 const py::handle& xq_obj) {
  const KernelInfo& kn = kernel_by_name(name, KernelOp::MATMUL_Q8);
  auto w = exact_array<uint8_t>(w_obj, "w");
  auto xq = exact_array<uint8_t>(xq_obj, "xq");
  const size_t rb = row_bytes_for(kn.wtype, k);
  if (rows <= 0 || size_t(w.size()) < rb * size_t(rows)) throw py::value_error("w is smaller than rows * row_bytes");
  if (xq.ndim() != 2 || xq.shape(1) != k / QK32 * int64_t(sizeof(ActQ8)))
    throw py::value_error("xq must be (n_tok, k/32*40) bytes from quantize_act");
  const int64_t n = xq.shape(0);
  py::array_t<float> y({n, rows});
  const uint8_t* wp = w.data();
  // ActQ8 holds floats: the kernels may assume 4-byte alignment of the activation buffer.
  if (reinterpret_cast<uintptr_t>(xq.data()) % alignof(ActQ8)) throw py::value_error("xq must be 4-byte aligned");
  const auto* xp = reinterpret_cast<const ActQ8*>(xq.data());
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    reinterpret_cast<MatmulQ8Fn>(kn.fn)(wp, rb, rows, k, xp, k / QK32, n, yp, rows);
  }
  return y;
}

// Benchmark plumbing for the int8 path: `iters` calls rotating through weight copies (cold weights),
// rows split over `threads` in the chunks runtime/linear.cc uses; returns seconds per call.
std::vector<double> q8_time_calls(const std::string& name, const py::list& copies, int64_t rows, int64_t k,
                                  const py::handle& xq_obj, int iters, int threads) {
  const KernelInfo& kn = kernel_by_name(name, KernelOp::MATMUL_Q8);
  const size_t rb = row_bytes_for(kn.wtype, k);
  std::vector<U8Array> keep;
  for (const auto& c : copies) {
    keep.push_back(exact_array<uint8_t>(c, "copy"));
    if (rows <= 0 || size_t(keep.back().size()) < rb * size_t(rows))
      throw py::value_error("a weight copy is smaller than rows * row_bytes");
  }
  if (keep.empty()) throw py::value_error("no weight copies");
  auto xq = exact_array<uint8_t>(xq_obj, "xq");
  if (xq.ndim() != 2 || xq.shape(1) != k / QK32 * int64_t(sizeof(ActQ8)))
    throw py::value_error("xq must be (n_tok, k/32*40) bytes from quantize_act");
  if (reinterpret_cast<uintptr_t>(xq.data()) % alignof(ActQ8)) throw py::value_error("xq must be 4-byte aligned");
  if (threads < 1 || threads > 256) throw py::value_error("threads must be 1..256");
  const int64_t n = xq.shape(0);
  const auto* xp = reinterpret_cast<const ActQ8*>(xq.data());
  std::vector<float> y(static_cast<size_t>(n * rows));
  std::vector<double> out(static_cast<size_t>(std::max(iters, 0)));
  py::gil_scoped_release nogil;
  ThreadPool pool(threads);
  int64_t per = rows;  // rows per task: ~8 tasks per thread, multiples of 16 rows (linear.cc row_chunk)
  if (threads > 1) per = std::max<int64_t>(16, ((rows + threads * 8 - 1) / (threads * 8) + 15) / 16 * 16);
  const int64_t tasks = (rows + per - 1) / per;
  auto fn = reinterpret_cast<MatmulQ8Fn>(kn.fn);
  for (int i = 0; i < iters; ++i) {
    const uint8_t* w = keep[size_t(i) % keep.size()].data();
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(tasks, [&](int64_t c, int) {
      const int64_t r0 = c * per, r1 = std::min(rows, r0 + per);
      fn(w + size_t(r0) * rb, rb, r1 - r0, k, xp, k / QK32, n, y.data() + r0, rows);
    });
    out[size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return out;
}

// w: rows * row_bytes bytes of F32/F16/BF16; x: (n_tok, k) float32 -> (n_tok, rows)
py::array_t<float> run_matmul_f32(const std::string& name, const py::handle& w_obj, int64_t rows, int64_t k,
                                  const py::handle& x_obj) {
  const KernelInfo& kn = kernel_by_name(name, KernelOp::MATMUL_F32);
  auto w = exact_array<uint8_t>(w_obj, "w");
  auto x = exact_array<float>(x_obj, "x");
  const size_t rb = row_bytes_for(kn.wtype, k);
  if (rows <= 0 || size_t(w.size()) < rb * size_t(rows)) throw py::value_error("w is smaller than rows * row_bytes");
  if (x.ndim() != 2 || x.shape(1) != k) throw py::value_error("x must be (n_tok, k)");
  const int64_t n = x.shape(0);
  py::array_t<float> y({n, rows});
  const uint8_t* wp = w.data();
  const float* xp = x.data();
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    reinterpret_cast<MatmulF32Fn>(kn.fn)(wp, rb, rows, k, xp, k, n, yp, rows);
  }
  return y;
}

// ---- runtime conversions ----------------------------------------------------------------------

std::shared_ptr<const FlashFfnConfig> flash_config_from_dict(const py::dict& d);  // flash block, below

ModelConfig config_from_dict(const py::dict& d) {
  ModelConfig c;
  auto get_int = [&](const char* k) {
    if (!d.contains(k)) throw Error(std::string("model config is missing '") + k + "'");
    return d[k].cast<int>();
  };
  c.arch = d.contains("arch") ? d["arch"].cast<std::string>() : "llama";
  c.n_layer = get_int("n_layer");
  c.d_model = get_int("d_model");
  c.n_head = get_int("n_head");
  c.n_head_kv = get_int("n_head_kv");
  c.head_dim = get_int("head_dim");
  c.d_ff = get_int("d_ff");
  c.n_vocab = get_int("n_vocab");
  c.n_ctx_train = get_int("n_ctx_train");
  c.rope_dim = get_int("rope_dim");
  if (d.contains("norm_eps")) c.norm_eps = d["norm_eps"].cast<float>();
  if (d.contains("rope_base")) c.rope_base = d["rope_base"].cast<float>();
  if (d.contains("rope_freq_scale")) c.rope_freq_scale = d["rope_freq_scale"].cast<float>();
  if (d.contains("use_lut")) c.use_lut = d["use_lut"].cast<bool>();
  if (d.contains("embd_scale")) c.embd_scale = d["embd_scale"].cast<float>();
  if (d.contains("attn_scale")) c.attn_scale = d["attn_scale"].cast<float>();
  if (d.contains("layer_window")) c.layer_window = d["layer_window"].cast<std::vector<int>>();
  if (d.contains("layer_rope_base")) c.layer_rope_base = d["layer_rope_base"].cast<std::vector<float>>();
  if (d.contains("layer_rope_freq_scale"))
    c.layer_rope_freq_scale = d["layer_rope_freq_scale"].cast<std::vector<float>>();
  if (d.contains("ffn_act")) {
    const std::string a = d["ffn_act"].cast<std::string>();
    if (a == "silu") c.ffn_act = FfnAct::SILU;
    else if (a == "gelu") c.ffn_act = FfnAct::GELU_TANH;
    else if (a == "relu2") c.ffn_act = FfnAct::RELU_SQR;
    else throw Error("unknown ffn_act '" + a + "' (silu, gelu, relu2)");
  }
  if (d.contains("rope_mode")) {
    const std::string m = d["rope_mode"].cast<std::string>();
    if (m == "norm") c.rope_mode = RopeMode::NORM;
    else if (m == "neox") c.rope_mode = RopeMode::NEOX;
    else throw Error("unknown rope_mode '" + m + "' (norm, neox)");
  }
  if (d.contains("flash") && !d["flash"].is_none()) c.flash = flash_config_from_dict(d["flash"].cast<py::dict>());
  return c;
}

std::vector<TensorDesc> tensors_from_list(const py::list& l) {
  std::vector<TensorDesc> out;
  for (const auto& item : l) {
    auto t = item.cast<py::tuple>();
    if (t.size() != 5 && t.size() != 6)
      throw Error("tensor descriptions are (name, type, shape, offset, nbytes[, lut_format])");
    TensorDesc d;
    d.name = t[0].cast<std::string>();
    d.type = t[1].cast<uint32_t>();
    d.shape = t[2].cast<std::vector<int64_t>>();
    d.offset = t[3].cast<uint64_t>();
    d.nbytes = t[4].cast<uint64_t>();
    if (t.size() == 6 && !t[5].is_none()) {  // a packed LUT tensor: shape is its logical (k, rows)
      auto f = t[5].cast<std::vector<int32_t>>();
      if (f.size() != 4) throw Error("tensor '" + d.name + "': lut_format must be (kind, group, scale_bytes, has_offset)");
      d.lut = LutFormat{f[0], f[1], f[2], f[3]};
    }
    out.push_back(std::move(d));
  }
  return out;
}

const char* path_name(Linear::Path p) {
  switch (p) {
    case Linear::Path::LUT: return "lut";
    case Linear::Path::Q8: return "q8";
    case Linear::Path::F32: return "f32";
    case Linear::Path::DEQUANT: return "dequant";
    default: return "none";
  }
}

}  // namespace

// ==== flash-backed weights (runtime/flash_*.h): bindings for tests and the engine ===============
namespace {

// Test entry point: reads ranges (offsets[i], lengths[i]) into one 4096-aligned staging buffer,
// range i placed at a 4096-aligned slot plus dst_shift bytes (dst_shift != 0 forces bounce reads
// under O_DIRECT), and returns one uint8 array per range.
py::list flash_reader_read(FlashReader& r, const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& lengths,
                           size_t dst_shift) {
  if (offsets.size() != lengths.size()) throw py::value_error("offsets and lengths differ in length");
  if (dst_shift >= FlashReader::kAlign) throw py::value_error("dst_shift must be < 4096");
  std::vector<size_t> slot(offsets.size());
  size_t total = 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    slot[i] = total + dst_shift;
    total += (dst_shift + lengths[i] + FlashReader::kAlign - 1) / FlashReader::kAlign * FlashReader::kAlign;
  }
  AlignedBuffer buf(total);
  std::vector<ReadRange> rr(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) rr[i] = ReadRange{offsets[i], lengths[i], buf.data() + slot[i]};
  {
    py::gil_scoped_release nogil;
    r.read(rr.data(), rr.size());
  }
  py::list out;
  for (size_t i = 0; i < offsets.size(); ++i) {
    py::array_t<uint8_t> a(py::ssize_t(lengths[i]));
    if (lengths[i]) std::memcpy(a.mutable_data(), buf.data() + slot[i], lengths[i]);
    out.append(a);
  }
  return out;
}

std::shared_ptr<const FlashFfnConfig> flash_config_from_dict(const py::dict& d) {
  auto need = [&](const char* k) -> py::object {
    if (!d.contains(k)) throw Error(std::string("flash config is missing '") + k + "'");
    return d[k];
  };
  auto c = std::make_shared<FlashFfnConfig>();
  c->path = need("path").cast<std::string>();
  const std::string mode = d.contains("mode") ? d["mode"].cast<std::string>() : "dense";
  if (mode == "dense") c->mode = FlashMode::DENSE_STREAM;
  else if (mode == "resident") c->mode = FlashMode::RESIDENT;
  else if (mode == "windowed") c->mode = FlashMode::WINDOWED;
  else throw Error("unknown flash mode '" + mode + "' (dense, resident, windowed)");
  if (d.contains("window")) c->window = d["window"].cast<int>();
  if (d.contains("slab_bundles")) c->slab_bundles = d["slab_bundles"].cast<int>();
  if (d.contains("threshold") && !d["threshold"].is_none()) c->threshold = d["threshold"].cast<std::vector<float>>();
  c->io = io_backend_from_name(d.contains("io") ? d["io"].cast<std::string>() : "auto");
  if (d.contains("io_threads")) c->io_threads = d["io_threads"].cast<int>();
  c->n_layer = need("n_layer").cast<int>();
  c->d_model = need("d_model").cast<int>();
  c->d_ff = need("d_ff").cast<int>();
  c->bundle_neurons = need("bundle_neurons").cast<int>();
  auto fmts = [&](const char* k) {
    std::vector<LutFormat> out;
    for (const auto& f : need(k).cast<std::vector<std::vector<int>>>()) {
      if (f.size() != 4) throw Error(std::string("flash config '") + k + "': formats have 4 entries");
      out.push_back(LutFormat{f[0], f[1], f[2], f[3]});
    }
    return out;
  };
  c->gu_format = fmts("gu_format");
  c->down_format = fmts("down_format");
  c->bundle_stride = need("bundle_stride").cast<std::vector<uint64_t>>();
  c->layer_offset = need("layer_offset").cast<std::vector<uint64_t>>();
  if (d.contains("resident_bundles")) c->resident_bundles = d["resident_bundles"].cast<int>();
  if (d.contains("predictor_rank")) c->predictor_rank = d["predictor_rank"].cast<int>();
  if (d.contains("unit_order") && !d["unit_order"].is_none()) {
    c->unit_neurons = need("unit_neurons").cast<int>();
    c->unit_order = d["unit_order"].cast<std::vector<std::vector<int32_t>>>();
  }
  return c;
}

void bind_flash(py::module_& m) {
  py::class_<FlashReader>(m, "FlashReader")
      .def(py::init([](const std::string& path, const std::string& backend, int threads, int depth) {
             return std::make_unique<FlashReader>(path, io_backend_from_name(backend), threads, depth);
           }),
           py::arg("path"), py::arg("backend") = "auto", py::arg("threads") = 4, py::arg("depth") = 64)
      .def_property_readonly("backend", [](const FlashReader& r) { return std::string(io_backend_name(r.backend())); })
      .def_property_readonly("direct", &FlashReader::direct)
      .def_property_readonly("file_size", &FlashReader::file_size)
      .def_property_readonly("fallback_reason", &FlashReader::fallback_reason)
      .def_property_readonly("bytes_issued", &FlashReader::bytes_issued)
      .def("read", &flash_reader_read, py::arg("offsets"), py::arg("lengths"), py::arg("dst_shift") = 0,
           "Read ranges -> list of uint8 arrays (one per range).");
  m.def("model_flash_info", [](const Model& mdl) -> py::object {
    if (!mdl.flash_ffn) return py::none();
    const FlashFfn& f = *mdl.flash_ffn;
    const FlashStats s = f.stats();
    py::dict out;
    out["mode"] = f.mode() == FlashMode::RESIDENT ? "resident" : f.mode() == FlashMode::WINDOWED ? "windowed" : "dense";
    out["bundles_per_layer"] = f.bundle_count();
    out["bundles_active"] = s.bundles_active;
    out["bundles_loaded"] = s.bundles_loaded;
    out["bundles_evicted"] = s.bundles_evicted;
    out["cache_s"] = s.cache_s;
    out["io"] = std::string(io_backend_name(f.io_backend()));
    out["memory_bytes"] = f.memory_bytes();
    out["bytes_read"] = s.bytes_read;
    out["io_wait_s"] = s.io_wait_s;
    out["compute_s"] = s.compute_s;
    out["gather_s"] = s.gather_s;
    out["layers_run"] = s.layers_run;
    out["predictor"] = f.has_predictor();
    return out;
  }, py::arg("model"), "Flash FFN mode, I/O backend, memory and counters since the last reset (None: no flash).");
  m.def("model_flash_set_thresholds", [](Model& mdl, const std::vector<float>& t) {
    if (!mdl.flash_ffn) throw py::value_error("the model has no flash FFN");
    mdl.flash_ffn->set_thresholds(t);
  }, py::arg("model"), py::arg("thresholds"), "Per-layer activation thresholds (windowed mode); [] = all active.");
  m.def("model_flash_record_scores", [](Model& mdl, bool on, bool inputs) {
    if (!mdl.flash_ffn) throw py::value_error("the model has no flash FFN");
    mdl.flash_ffn->record_scores(on, inputs);
  }, py::arg("model"), py::arg("on"), py::arg("inputs") = false);
  auto to_list = [](std::vector<std::vector<float>> vs) {
    py::list out;
    for (auto& v : vs) {
      py::array_t<float> a(py::ssize_t(v.size()));
      if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
      out.append(a);
    }
    return out;
  };
  m.def("model_flash_take_scores", [to_list](Model& mdl, bool exact) {
    if (!mdl.flash_ffn) throw py::value_error("the model has no flash FFN");
    return to_list(mdl.flash_ffn->take_scores(exact));
  }, py::arg("model"), py::arg("exact") = false,
     "Recorded per-bundle scores, one flat float32 array per layer (tokens x bundles): the ones bundles are "
     "chosen by, or with exact those of the exact gate (NaN where a bundle was not active).");
  m.def("model_flash_take_inputs", [to_list](Model& mdl) {
    if (!mdl.flash_ffn) throw py::value_error("the model has no flash FFN");
    return to_list(mdl.flash_ffn->take_inputs());
  }, py::arg("model"), "Recorded FFN inputs, one flat float32 array per layer (tokens x d_model).");
  m.def("model_flash_reset_stats", [](Model& mdl) {
    if (mdl.flash_ffn) mdl.flash_ffn->reset_stats();
  }, py::arg("model"));
}

}  // namespace
// ==== end flash-backed weights =================================================================

PYBIND11_MODULE(_core, m) {
  m.doc() = "lutllm native core (kernels + runtime)";

  // ---- ISA and kernel registry ----
  m.def("available_isas", [] {
    std::vector<std::string> out;
    for (Isa i : available_isas()) out.push_back(isa_name(i));
    return out;
  }, "ISA levels this CPU supports, 'ref' first.");
  m.def("active_isa", [] { return std::string(isa_name(kernels().isa_cap)); },
        "The ISA cap the kernel table was filled with (LUTLLM_ISA or the best available).");
  m.def("select_isa", [](const std::string& name) {
    Isa isa;
    if (!isa_from_name(name, &isa)) throw py::value_error("unknown ISA '" + name + "'");
    try { select_isa(isa); } catch (const std::runtime_error& e) { throw py::value_error(e.what()); }
  }, "Re-fill the kernel table with ISA cap `name` (tests/benchmarks).");
  m.def("kernel_list", [] {
    py::list out;
    for (const auto& k : kernel_registry()) {
      py::dict d;
      d["op"] = op_name(k.op);
      d["wtype"] = k.wtype;
      d["wtype_name"] = k.wtype >= 0 ? type_traits(uint32_t(k.wtype)).name : "";
      d["name"] = k.name;
      d["isa"] = isa_name(k.isa);
      d["supported"] = isa_supported(k.isa);
      out.append(d);
    }
    return out;
  }, "Every kernel of the registry (native/kernels.inc) with its op, weight type and ISA.");
  m.def("type_info", [](int t) {
    const TypeTraits& tt = type_traits(uint32_t(t));
    return py::make_tuple(tt.name, tt.block_elems, tt.block_bytes);
  }, "(name, block_elems, block_bytes) of a GGUF tensor type id.");
  m.def("run_attn_head", &run_attn_head, py::arg("name"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"));
  m.def("run_silu_mul", &run_silu_mul, py::arg("name"), py::arg("a"), py::arg("b"));
  m.def("run_dequant", &run_dequant, py::arg("name"), py::arg("src"), py::arg("n"));
  m.def("run_quantize_act", &run_quantize_act, py::arg("name"), py::arg("x"));
  m.def("run_matmul_q8", &run_matmul_q8, py::arg("name"), py::arg("w"), py::arg("rows"), py::arg("k"), py::arg("xq"));
  m.def("q8_time_calls", &q8_time_calls, py::arg("name"), py::arg("copies"), py::arg("rows"), py::arg("k"),
        py::arg("xq"), py::arg("iters"), py::arg("threads") = 1,
        "Time `iters` calls of one int8 matmul kernel on cold weight copies, rows split over `threads` -> seconds.");
  m.def("run_matmul_f32", &run_matmul_f32, py::arg("name"), py::arg("w"), py::arg("rows"), py::arg("k"), py::arg("x"));

  // ---- LUT kernels (T-MAC style) ----
  // Formats travel as (kind, group, scale_bytes, has_offset) tuples; packed weights as uint8 arrays.
  {
    auto to_fmt = [](const py::tuple& t) {
      if (t.size() != 4) throw py::value_error("LUT format must be (kind, group, scale_bytes, has_offset)");
      return LutFormat{t[0].cast<int32_t>(), t[1].cast<int32_t>(), t[2].cast<int32_t>(), t[3].cast<int32_t>()};
    };
    auto from_fmt = [](const LutFormat& f) { return py::make_tuple(f.kind, f.group, f.scale_bytes, f.has_offset); };
    auto check_fmt = [](const LutFormat& f, int64_t rows, int64_t k) {
      const std::string bad = lut_check_format(f, rows, k);
      if (!bad.empty()) throw py::value_error(bad);
    };
    auto weights_view = [check_fmt](const U8Array& packed, const LutFormat& f, int64_t rows, int64_t k) {
      check_fmt(f, rows, k);
      const size_t need = lut_packed_bytes(f, rows, k);
      if (size_t(packed.size()) < need)
        throw py::value_error("packed holds " + std::to_string(packed.size()) + " bytes, " + std::to_string(need) + " needed");
      return LutWeights{packed.data(), rows, k, f};
    };
    m.def("lut_packed_bytes", [to_fmt, check_fmt](const py::tuple& fmt, int64_t rows, int64_t k) {
      const LutFormat f = to_fmt(fmt);
      check_fmt(f, rows, k);
      return lut_packed_bytes(f, rows, k);
    }, py::arg("fmt"), py::arg("rows"), py::arg("k"), "Bytes of a packed LUT tensor.");
    // the output array of a quantizer: a new one, or the caller's writable array of exactly need bytes
    auto packed_out = [](const py::object& out_obj, size_t need) -> py::array_t<uint8_t> {
      if (out_obj.is_none()) return py::array_t<uint8_t>(py::ssize_t(need));
      auto out = exact_array<uint8_t>(out_obj, "out");
      if (!out.writeable()) throw py::value_error("out is read-only");
      if (size_t(out.size()) != need)
        throw py::value_error("out holds " + std::to_string(out.size()) + " bytes, " + std::to_string(need) + " needed");
      return out;
    };
    m.def("lut_quantize", [from_fmt, packed_out](const py::handle& w_obj, int kind, int group, int method, const py::object& out_obj) {
      auto w = exact_array<float>(w_obj, "w");
      if (w.ndim() != 2) throw py::value_error("w must be 2-D (rows, k)");
      const int64_t rows = w.shape(0), k = w.shape(1);
      const std::string bad = lut_check_format(LutFormat{kind, group, 2, kind == 5 ? 0 : 1}, rows, k);
      if (!bad.empty()) throw py::value_error(bad);
      if (method != LUT_QUANT_RTN && method != LUT_QUANT_MSE) throw py::value_error("method must be 0 (rtn) or 1 (mse)");
      LutFormat f{kind, group, 2, kind == 5 ? 0 : 1};
      const size_t need = lut_packed_bytes(f, rows, k);
      py::array_t<uint8_t> out = packed_out(out_obj, need);
      const float* wp = w.data();
      uint8_t* op = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        lut_quantize(kind, group, rows, k, wp, op, &f, method);
      }
      return py::make_tuple(out, from_fmt(f));
    }, py::arg("w"), py::arg("kind"), py::arg("group"), py::arg("method") = 0, py::arg("out") = py::none(),
       "Quantize float weights (rows, k) -> (packed, fmt). kind 1..4 bits or 5 = ternary; method 0 = "
       "round to nearest, 1 = least squared error; out: optional uint8 array of exactly the packed size.");
    m.def("lut_kq_format", [from_fmt](int kind) {
      LutFormat f{};
      if (!lut_kq_format(kind, &f))
        throw py::value_error("k-quant sub-scales take kind 2, 3 or 4 (bits), got " + std::to_string(kind));
      return from_fmt(f);
    }, py::arg("kind"), "The packed format lut_quantize_kq writes for kind 2..4: (kind, group, scale_bytes, has_offset).");
    m.def("lut_quantize_kq", [from_fmt, packed_out](const py::handle& w_obj, int kind, int method, const py::object& out_obj) {
      auto w = exact_array<float>(w_obj, "w");
      if (w.ndim() != 2) throw py::value_error("w must be 2-D (rows, k)");
      const int64_t rows = w.shape(0), k = w.shape(1);
      LutFormat f{};
      if (!lut_kq_format(kind, &f))
        throw py::value_error("k-quant sub-scales take kind 2, 3 or 4 (bits), got " + std::to_string(kind));
      const std::string bad = lut_check_format(f, rows, k);
      if (!bad.empty()) throw py::value_error(bad);
      if (method != LUT_QUANT_RTN && method != LUT_QUANT_MSE) throw py::value_error("method must be 0 (rtn) or 1 (mse)");
      const size_t need = lut_packed_bytes(f, rows, k);
      py::array_t<uint8_t> out = packed_out(out_obj, need);
      const float* wp = w.data();
      uint8_t* op = out.mutable_data();
      double err;
      {
        py::gil_scoped_release nogil;
        err = lut_quantize_kq(kind, rows, k, wp, op, &f, method);
      }
      return py::make_tuple(out, from_fmt(f), err);
    }, py::arg("w"), py::arg("kind"), py::arg("method") = 1, py::arg("out") = py::none(),
       "Quantize float weights (rows, k), k % 256 == 0, into k-quant sub-scales -> (packed, fmt, sq_err): "
       "kind 2 = W2 g16 4-bit sc/m, 3 = W3 g16 int8 sc symmetric, 4 = W4 g32 8-bit sc/m; method 0 = rtn, "
       "1 = least squared error; out: optional uint8 array of exactly the packed size.");
    m.def("dequant_rows", [](int type_id, const py::handle& src_obj, int64_t rows, int64_t k) {
      // the active registry's decoder for a GGUF type: rows x k elements -> float32 (rows, k)
      auto src = exact_array<uint8_t>(src_obj, "src");
      const size_t rb = row_bytes_for(type_id, k);
      DequantRowFn dq = type_id >= 0 && type_id < kGgmlTypeCount ? kernels().dequant[type_id] : nullptr;
      if (!dq) throw py::value_error(std::string("no decoder for tensor type ") + type_traits(uint32_t(type_id)).name);
      if (rows < 0 || size_t(src.size()) != rb * size_t(rows))
        throw py::value_error("src holds " + std::to_string(src.size()) + " bytes, " + std::to_string(rb * size_t(rows)) +
                              " expected for " + std::to_string(rows) + " rows");
      py::array_t<float> out({rows, k});
      const uint8_t* sp = src.data();
      float* op = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        for (int64_t r = 0; r < rows; ++r) dq(sp + size_t(r) * rb, op + r * k, k);
      }
      return out;
    }, py::arg("type_id"), py::arg("src"), py::arg("rows"), py::arg("k"),
       "Decode rows x k elements of a GGUF tensor type to float32 with the active kernel table.");
    m.attr("LUT_TERNARY_REPACK_GROUP") = kLutTernaryRepackGroup;  // TQ1_0 / TQ2_0 -> TERNARY at this group
    m.def("lut_format_for_ggml", [from_fmt](int type_id, int ternary_group, bool kq) {
      LutFormat f;
      std::string err;
      if (!lut_format_for_ggml(GgmlType(type_id), ternary_group, &f, &err, kq)) throw py::value_error(err);
      return from_fmt(f);
    }, py::arg("type_id"), py::arg("ternary_group") = kLutTernaryRepackGroup, py::arg("kq") = true,
       "LUT format a GGUF type repacks to exactly; kq=False: Q4_K / Q3_K / Q2_K with fp32 scales instead of "
       "k-quant sub-scales.");
    m.def("lut_repack_ggml", [from_fmt, to_fmt](int type_id, const py::handle& blocks_obj, int64_t rows, int64_t k,
                                                int ternary_group, bool kq, const py::object& fmt_obj) {
      auto blocks = exact_array<uint8_t>(blocks_obj, "blocks");
      LutFormat f;
      std::string err;
      if (!lut_format_for_ggml(GgmlType(type_id), ternary_group, &f, &err, kq)) throw py::value_error(err);
      if (!fmt_obj.is_none()) {  // an explicit target, e.g. an older layout of the type
        f = to_fmt(fmt_obj.cast<py::tuple>());
        if (!lut_repack_supported(GgmlType(type_id), f))
          throw py::value_error("GGUF type id " + std::to_string(type_id) + " does not repack exactly to LUT format (" +
                                std::to_string(f.kind) + ", " + std::to_string(f.group) + ", " +
                                std::to_string(f.scale_bytes) + ", " + std::to_string(f.has_offset) + ")");
      }
      const size_t need = row_bytes_for(type_id, k) * size_t(rows);
      if (rows <= 0 || size_t(blocks.size()) < need)
        throw py::value_error("blocks holds " + std::to_string(blocks.size()) + " bytes, " + std::to_string(need) + " needed");
      const std::string bad = lut_check_format(f, rows, k);
      if (!bad.empty()) throw py::value_error(bad);
      py::array_t<uint8_t> out(py::ssize_t(lut_packed_bytes(f, rows, k)));
      const uint8_t* bp = blocks.data();
      uint8_t* op = out.mutable_data();
      bool ok;
      {
        py::gil_scoped_release nogil;
        ok = lut_repack_ggml(GgmlType(type_id), bp, rows, k, f, op, &err);
      }
      if (!ok) throw py::value_error(err);
      return py::make_tuple(out, from_fmt(f));
    }, py::arg("type_id"), py::arg("blocks"), py::arg("rows"), py::arg("k"), py::arg("ternary_group") = kLutTernaryRepackGroup,
       py::arg("kq") = true, py::arg("fmt") = py::none(),
       "Repack GGUF blocks (rows x k) into the LUT layout -> (packed, fmt); fmt: any format the type "
       "repacks to exactly (default: lut_format_for_ggml's, with kq).");
    m.def("lut_unpack", [to_fmt, weights_view](const py::handle& packed_obj, const py::tuple& fmt, int64_t rows, int64_t k) {
      auto packed = exact_array<uint8_t>(packed_obj, "packed");
      const LutWeights w = weights_view(packed, to_fmt(fmt), rows, k);
      py::array_t<float> out({rows, k});
      float* op = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        lut_unpack(w, 0, rows, op);
      }
      return out;
    }, py::arg("packed"), py::arg("fmt"), py::arg("rows"), py::arg("k"), "Decode a packed LUT tensor to floats.");
    m.def("run_lut_build", [](const std::string& name, const py::handle& x_obj, int ag) {
      const KernelInfo& kn = kernel_by_name(name, KernelOp::LUT_BUILD);
      auto x = exact_array<float>(x_obj, "x");
      if (x.ndim() != 2) throw py::value_error("x must be 2-D (n_tok, k)");
      const int64_t n = x.shape(0), k = x.shape(1);
      if (ag <= 0 || ag % 16 || k <= 0 || k % ag) throw py::value_error("ag must be a multiple of 16 dividing k");
      py::array_t<int8_t> tab({n, k * 4});
      py::array_t<float> sc({n, k / ag}), s16({n, k / 16});
      const float* xp = x.data();
      int8_t* tp = tab.mutable_data();
      float *sp = sc.mutable_data(), *s16p = s16.mutable_data();
      {
        py::gil_scoped_release nogil;
        for (int64_t t = 0; t < n; ++t)
          reinterpret_cast<LutBuildFn>(kn.fn)(xp + t * k, k, ag, 0, k / ag, tp + t * k * 4, sp + t * (k / ag),
                                              s16p + t * (k / 16));
      }
      return py::make_tuple(tab, sc, s16);
    }, py::arg("name"), py::arg("x"), py::arg("ag"),
       "Build activation tables with one registry kernel -> (tab int8 (n,k*4), scale (n,k/ag), sum16 (n,k/16)).");
    m.def("run_lut_matmul", [to_fmt, weights_view](const std::string& name, const py::handle& packed_obj,
                                                   const py::tuple& fmt, int64_t rows, int64_t k,
                                                   const py::handle& tab_obj, const py::handle& sc_obj,
                                                   const py::handle& s16_obj, int ag, int64_t row_begin,
                                                   int64_t row_end) {
      const KernelInfo* kp = find_kernel(name);
      if (!kp || (kp->op != KernelOp::LUT_GEMV && kp->op != KernelOp::LUT_GEMM))
        throw py::value_error("'" + name + "' is not a LUT GEMV/GEMM kernel");
      const KernelInfo& kn = kernel_by_name(name, kp->op);
      auto packed = exact_array<uint8_t>(packed_obj, "packed");
      auto tab = exact_array<int8_t>(tab_obj, "tab");
      auto sc = exact_array<float>(sc_obj, "scale");
      auto s16 = exact_array<float>(s16_obj, "sum16");
      const LutWeights w = weights_view(packed, to_fmt(fmt), rows, k);
      if (kn.wtype != w.fmt.kind) throw py::value_error("kernel '" + name + "' is for another LUT kind than fmt");
      if (!lut_act_group_ok(w.fmt, ag) || k % ag)
        throw py::value_error("ag must suit the format (lut_act_group_ok: a multiple of the group; k-quant: a power of two dividing 256 or a multiple of 256) and divide k");
      if (tab.ndim() != 2 || tab.shape(1) != k * 4) throw py::value_error("tab must be (n_tok, k*4)");
      const int64_t n = tab.shape(0);
      if (sc.ndim() != 2 || sc.shape(0) != n || sc.shape(1) != k / ag) throw py::value_error("scale must be (n_tok, k/ag)");
      if (s16.ndim() != 2 || s16.shape(0) != n || s16.shape(1) != k / 16) throw py::value_error("sum16 must be (n_tok, k/16)");
      if (kn.op == KernelOp::LUT_GEMV && n != 1) throw py::value_error("a GEMV kernel takes one token");
      if (reinterpret_cast<uintptr_t>(sc.data()) % 4 || reinterpret_cast<uintptr_t>(s16.data()) % 4)
        throw py::value_error("scale and sum16 must be 4-byte aligned");
      if (row_end < 0) row_end = rows;
      if (row_begin < 0 || row_end > rows || row_begin > row_end)
        throw py::value_error("row range must satisfy 0 <= row_begin <= row_end <= rows");
      std::vector<LutAct> acts(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t)
        acts[size_t(t)] = LutAct{tab.data() + t * k * 4, sc.data() + t * (k / ag), s16.data() + t * (k / 16), k, ag, 0};
      py::array_t<float> y({n, rows});
      float* yp = y.mutable_data();
      std::fill(yp, yp + n * rows, 0.0f);
      {
        py::gil_scoped_release nogil;
        if (kn.op == KernelOp::LUT_GEMV)
          reinterpret_cast<LutGemvFn>(kn.fn)(&w, acts.data(), row_begin, row_end, yp);
        else
          reinterpret_cast<LutGemmFn>(kn.fn)(&w, acts.data(), n, row_begin, row_end, yp, rows);
      }
      return y;
    }, py::arg("name"), py::arg("packed"), py::arg("fmt"), py::arg("rows"), py::arg("k"), py::arg("tab"),
       py::arg("scale"), py::arg("sum16"), py::arg("ag"), py::arg("row_begin") = 0, py::arg("row_end") = -1,
       "Run one registry LUT GEMV (n_tok = 1) or GEMM kernel -> y (n_tok, rows); rows outside the range stay 0.");
    // Benchmark plumbing: time `iters` calls of one LUT kernel in C++, rotating through weight
    // copies (so each call streams cold weights); returns seconds per call.
    m.def("lut_time_calls", [to_fmt, weights_view](const std::string& name, const py::list& copies, const py::tuple& fmt,
                                                   int64_t rows, int64_t k, const py::handle& tab_obj,
                                                   const py::handle& sc_obj, const py::handle& s16_obj, int ag,
                                                   int iters, int threads) {
      const KernelInfo* kp = find_kernel(name);
      if (!kp || (kp->op != KernelOp::LUT_GEMV && kp->op != KernelOp::LUT_GEMM))
        throw py::value_error("'" + name + "' is not a LUT GEMV/GEMM kernel");
      const KernelInfo& kn = kernel_by_name(name, kp->op);
      const LutFormat f = to_fmt(fmt);
      std::vector<LutWeights> ws;
      std::vector<U8Array> keep;
      for (const auto& c : copies) {
        keep.push_back(exact_array<uint8_t>(c, "copy"));
        ws.push_back(weights_view(keep.back(), f, rows, k));
      }
      if (ws.empty()) throw py::value_error("no weight copies");
      auto tab = exact_array<int8_t>(tab_obj, "tab");
      auto sc = exact_array<float>(sc_obj, "scale");
      auto s16 = exact_array<float>(s16_obj, "sum16");
      const int64_t n = tab.ndim() == 2 ? tab.shape(0) : 0;
      if (n <= 0 || tab.shape(1) != k * 4 || sc.size() != n * (k / ag) || s16.size() != n * (k / 16) ||
          !lut_act_group_ok(f, ag) || k % ag)
        throw py::value_error("tables do not match k / ag");
      if (kn.op == KernelOp::LUT_GEMV && n != 1) throw py::value_error("a GEMV kernel takes one token");
      std::vector<LutAct> acts(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t)
        acts[size_t(t)] = LutAct{tab.data() + t * k * 4, sc.data() + t * (k / ag), s16.data() + t * (k / 16), k, ag, 0};
      if (threads < 1 || threads > 256) throw py::value_error("threads must be 1..256");
      std::vector<float> y(static_cast<size_t>(n * rows));
      std::vector<double> out(static_cast<size_t>(iters));
      {
        py::gil_scoped_release nogil;
        ThreadPool pool(threads);
        // whole 16-row blocks per task, about 4 tasks per thread (as runtime/linear.cc splits them)
        const int64_t blocks = lut_row_blocks(rows);
        const int64_t per = std::max<int64_t>(1, (blocks + threads * 4 - 1) / (threads * 4));
        const int64_t tasks = (blocks + per - 1) / per;
        for (int i = 0; i < iters; ++i) {
          const LutWeights& w = ws[size_t(i) % ws.size()];
          const auto t0 = std::chrono::steady_clock::now();
          auto task = [&](int64_t c, int) {
            const int64_t r0 = threads == 1 ? 0 : c * per * kLutRows;
            const int64_t r1 = threads == 1 ? rows : std::min(rows, (c + 1) * per * kLutRows);
            if (kn.op == KernelOp::LUT_GEMV)
              reinterpret_cast<LutGemvFn>(kn.fn)(&w, acts.data(), r0, r1, y.data());
            else
              reinterpret_cast<LutGemmFn>(kn.fn)(&w, acts.data(), n, r0, r1, y.data(), rows);
          };
          if (threads == 1) task(0, 0);  // one call over all rows
          else pool.parallel_for(tasks, task);
          out[size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
      }
      return out;
    }, py::arg("name"), py::arg("copies"), py::arg("fmt"), py::arg("rows"), py::arg("k"), py::arg("tab"),
       py::arg("scale"), py::arg("sum16"), py::arg("ag"), py::arg("iters"), py::arg("threads") = 1,
       "Time `iters` calls of one LUT kernel on cold weight copies, rows split over `threads` -> seconds per call.");
  }
  // (end LUT kernels)

  // ---- runtime: model, context ----
  static py::exception<Error> error_type(m, "Error", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::set_error(error_type, e.what());
    } catch (const Cancelled& e) {
      py::set_error(PyExc_KeyboardInterrupt, e.what());
    }
  });
  m.def("physical_cores", &physical_core_count);

  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def(py::init([](const std::string& path, const py::dict& cfg, const py::list& tensors, int n_threads,
                       const py::object& progress) {
             ModelConfig c = config_from_dict(cfg);
             std::vector<TensorDesc> t = tensors_from_list(tensors);
             Model::Progress report;
             if (!progress.is_none())
               report = [progress](int done, int total) {
                 py::gil_scoped_acquire gil;
                 progress(done, total);
               };
             py::gil_scoped_release nogil;
             return std::make_shared<Model>(path, c, t, n_threads, report);
           }),
           py::arg("path"), py::arg("config"), py::arg("tensors"), py::arg("n_threads") = 0,
           py::arg("progress") = py::none(),
           "progress(done, total), if given, is called after each layer is bound (with the GIL).")
      .def_property_readonly("n_threads", [](const Model& mdl) { return mdl.pool().size(); })
      .def_property_readonly("n_vocab", [](const Model& mdl) { return mdl.config().n_vocab; })
      .def_property_readonly("mapping_address", [](const Model& mdl) {
        return reinterpret_cast<uintptr_t>(mdl.store().file().data());
      })
      .def_property_readonly("mapping_size", [](const Model& mdl) { return mdl.store().file().size(); })
      .def("tensor_view", [](std::shared_ptr<Model> mdl, const std::string& name) {
        const WeightTensor& t = mdl->store().get(name);
        // A read-only uint8 view into the mapping; the capsule keeps the model (and mmap) alive.
        auto* keep = new std::shared_ptr<Model>(mdl);
        py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<Model>*>(p); });
        py::array_t<uint8_t> a({py::ssize_t(t.nbytes)}, {py::ssize_t(1)}, t.data, owner);
        py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
        return a;
      }, "Zero-copy read-only bytes of one tensor, straight from the file mapping.")
      .def("linear_paths", [](const Model& mdl) {
        py::dict out;
        auto add = [&](const Linear& L) { if (!L.empty()) out[py::str(L.weight().name)] = path_name(L.path()); };
        add(mdl.output);
        for (const auto& L : mdl.layers) {
          add(L.wq.w); add(L.wk.w); add(L.wv.w); add(L.wo.w); add(L.w_gate.w); add(L.w_up.w); add(L.w_down.w);
        }
        return out;
      }, "Which kernel family runs each linear layer (q8, f32, dequant).");

  py::class_<Context>(m, "Context")
      .def(py::init([](std::shared_ptr<Model> mdl, int n_ctx, int n_batch, bool full_window_kv) {
             return std::make_unique<Context>(std::move(mdl), n_ctx, n_batch, full_window_kv);
           }),
           py::arg("model"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("full_window_kv") = false)
      .def_property_readonly("n_ctx", &Context::n_ctx)
      .def_property_readonly("resume_floor", &Context::resume_floor)
      .def_property_readonly("kv_cache_bytes", &Context::kv_cache_bytes)
      .def_property_readonly("n_batch", &Context::n_batch)
      .def("eval", [](Context& ctx, const py::handle& tokens_obj, int64_t pos, bool all_logits) {
        auto tokens = exact_array<int32_t>(tokens_obj, "tokens");
        if (tokens.ndim() != 1) throw py::value_error("tokens must be 1-D int32");
        const int64_t n = tokens.shape(0);
        if (n == 0) throw py::value_error("tokens is empty");
        const int64_t rows = all_logits ? n : 1;
        py::array_t<float> logits({rows, int64_t(ctx.n_vocab())});
        const int32_t* tp = tokens.data();
        float* lp = logits.mutable_data();
        {
          py::gil_scoped_release nogil;
          ctx.eval(tp, n, pos, all_logits, lp);
        }
        return logits;
      }, py::arg("tokens"), py::arg("pos"), py::arg("all_logits") = false,
         "Evaluate int32 tokens at positions pos..; returns float32 logits (n or 1, n_vocab).")
      .def("request_cancel", &Context::request_cancel, "Ask a running eval (other thread) to stop.")
      .def("save_kv", [](const Context& ctx, int64_t n_past) {
        const int64_t n = ctx.kv_state_floats(n_past);
        py::array_t<float> out({py::ssize_t(n)});
        float* p = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          ctx.save_kv(n_past, p);
        }
        return out;
      }, py::arg("n_past"), "Copy of the first n_past cached K/V rows of every layer (flat float32).")
      .def("load_kv", [](Context& ctx, int64_t n_past, const py::handle& state_obj) {
        auto state = exact_array<float>(state_obj, "state");
        if (state.ndim() != 1 || state.shape(0) != ctx.kv_state_floats(n_past))
          throw py::value_error("state has " + std::to_string(state.size()) + " floats, expected " +
                                std::to_string(ctx.kv_state_floats(n_past)) + " for " + std::to_string(n_past) +
                                " positions of this model");
        const float* p = state.data();
        py::gil_scoped_release nogil;
        ctx.load_kv(n_past, p);
      }, py::arg("n_past"), py::arg("state"), "Restore K/V rows written by save_kv.");
  // (end runtime)
  bind_flash(m);  // flash-backed weights block
}
