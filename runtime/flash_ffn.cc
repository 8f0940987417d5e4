// FlashFfn: stages a layer's neuron bundles (resident copy, or double-buffered streaming reads) and
// runs the SwiGLU FFN on them with the same LUT kernels, tables and accumulation order as Linear.
// Gate/up run per bundle (whole 16-row blocks, so rows are unaffected by the split); down needs its
// K groups in order, so the bundles' down K-slices are gathered into one packed (d x d_ff) matrix.
#include "flash_ffn.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "error.h"
#include "lutllm/kernels.h"
#include "ops.h"

namespace lutllm {

namespace {
using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
}  // namespace

int FlashFfn::bundle_count() const { return (cfg_.d_ff + cfg_.bundle_neurons - 1) / cfg_.bundle_neurons; }
int64_t FlashFfn::bundle_size(int j) const {
  return std::min<int64_t>(cfg_.bundle_neurons, int64_t(cfg_.d_ff) - int64_t(j) * cfg_.bundle_neurons);
}
size_t FlashFfn::gate_bytes(int l, int64_t n) const {
  return size_t(n / kLutRows) * lut_row_block_bytes(cfg_.gu_format[size_t(l)], cfg_.d_model);
}
size_t FlashFfn::down_bytes(int l, int64_t n) const {
  const LutFormat& f = cfg_.down_format[size_t(l)];
  return size_t(cfg_.d_model / kLutRows) * size_t(n / f.group) * lut_group_block_bytes(f);
}
uint64_t FlashFfn::layer_bytes(int l) const { return uint64_t(bundle_count()) * cfg_.bundle_stride[size_t(l)]; }

// Units: the granularity of the neuron order (a whole bundle when the file keeps the source order).
namespace {
struct Units {
  int64_t size, d_ff;
  int64_t first(int64_t n0) const { return n0 / size; }
  int64_t end(int64_t n0, int64_t nj) const { return (n0 + nj + size - 1) / size; }
  int64_t count(int64_t u) const { return std::min(size, d_ff - u * size); }
};
}  // namespace

template <class KPos>
void FlashFfn::bundle_parts(int l, int j, const uint8_t* down, KPos kpos, std::vector<DownPart>& out) const {
  const LutFormat& dn = cfg_.down_format[size_t(l)];
  const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
  const Units U{cfg_.unit_order.empty() ? cfg_.bundle_neurons : cfg_.unit_neurons, cfg_.d_ff};
  const size_t gbb = lut_group_block_bytes(dn), stride = size_t(nj / dn.group) * gbb;
  for (int64_t u = U.first(n0); u < U.end(n0, nj); ++u)
    out.push_back(DownPart{down + size_t((u * U.size - n0) / dn.group) * gbb, kpos(u), U.count(u), stride});
}

const float* FlashFfn::unpermute(int l, const float* h, int64_t n) {
  if (cfg_.unit_order.empty()) return h;
  const int64_t U = cfg_.unit_neurons, dff = cfg_.d_ff;
  hperm_.resize(size_t(n * dff));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t u = 0; u < dff / U; ++u)
      std::memcpy(hperm_.data() + t * dff + int64_t(unit_src(l, int(u))) * U, h + t * dff + u * U, size_t(U) * sizeof(float));
  return hperm_.data();
}

FlashFfn::FlashFfn(const FlashFfnConfig& cfg, int n_layer, int d_model, int d_ff, std::vector<Linear> pred_a,
                   std::vector<Linear> pred_b)
    : cfg_(cfg) {
  const std::string where = cfg.path + ": flash layout";
  if (cfg.n_layer != n_layer || cfg.d_model != d_model || cfg.d_ff != d_ff)
    throw Error(where + " is for " + std::to_string(cfg.n_layer) + " layers, d_model " + std::to_string(cfg.d_model) +
                ", d_ff " + std::to_string(cfg.d_ff) + "; the model has " + std::to_string(n_layer) + ", " +
                std::to_string(d_model) + ", " + std::to_string(d_ff));
  const size_t L = size_t(n_layer);
  if (cfg.gu_format.size() != L || cfg.down_format.size() != L || cfg.bundle_stride.size() != L ||
      cfg.layer_offset.size() != L)
    throw Error(where + ": per-layer entries do not match " + std::to_string(n_layer) + " layers");
  if (d_model % kLutRows || d_ff % kLutRows) throw Error(where + ": d_model and d_ff must be multiples of 16");
  if (cfg.bundle_neurons <= 0 || cfg.bundle_neurons % kLutRows)
    throw Error(where + ": bundle size " + std::to_string(cfg.bundle_neurons) + " is not a positive multiple of 16");
  reader_ = std::make_unique<FlashReader>(cfg.path, cfg.io, cfg.io_threads);
  const KernelTable& kt = kernels();
  if (!kt.lut_build) throw Error(where + ": this CPU has no table-lookup kernels");
  uint64_t max_layer = 0;
  size_t max_down = 0;
  for (int l = 0; l < n_layer; ++l) {
    const std::string at = where + ", layer " + std::to_string(l);
    const LutFormat& gu = cfg.gu_format[size_t(l)];
    const LutFormat& dn = cfg.down_format[size_t(l)];
    std::string bad = lut_check_format(gu, cfg.bundle_neurons, d_model);
    if (bad.empty()) bad = lut_check_format(dn, d_model, d_ff);
    if (bad.empty() && cfg.bundle_neurons % dn.group) bad = "bundle size is not a multiple of the down group";
    // gate/up bundles are whole row blocks (any format); down bundles are K-slices of groups, which
    // k-quant super-blocks (256 weights, one header) are wider than
    if (bad.empty() && lut_is_kq(dn)) bad = "down matrix: k-quant sub-scales (scale_bytes 1 or 3) cannot be cut into K-slices";
    if (!bad.empty()) throw Error(at + ": " + bad);
    for (int kind : {gu.kind, dn.kind})
      if (!kt.lut_gemv[kind] || !kt.lut_gemm[kind]) throw Error(at + ": no kernel for LUT kind " + lut_kind_name(kind));
    const uint64_t stride = cfg.bundle_stride[size_t(l)];
    if (stride % FlashReader::kAlign || stride < 2 * gate_bytes(l, cfg.bundle_neurons) + down_bytes(l, cfg.bundle_neurons))
      throw Error(at + ": bundle stride " + std::to_string(stride) + " is unaligned or smaller than a bundle");
    const uint64_t off = cfg.layer_offset[size_t(l)];
    if (off % FlashReader::kAlign || off > reader_->file_size() || layer_bytes(l) > reader_->file_size() - off)
      throw Error(at + ": bundles [offset " + std::to_string(off) + ", " + std::to_string(layer_bytes(l)) +
                  " bytes] are unaligned or extend past the end of the file (size " +
                  std::to_string(reader_->file_size()) + ")");
    max_layer = std::max(max_layer, layer_bytes(l) - uint64_t(cfg.resident_bundles) * stride);
    max_down = std::max(max_down, lut_packed_bytes(dn, d_model, d_ff));
  }
  if (!cfg.unit_order.empty()) {
    const int U = cfg.unit_neurons;
    if (U <= 0 || U % kLutRows || cfg.bundle_neurons % U || d_ff % U)
      throw Error(where + ": neuron unit " + std::to_string(U) + " must be a multiple of 16 dividing the bundle size and d_ff");
    if (cfg.unit_order.size() != L) throw Error(where + ": one neuron order per layer needed");
    for (int l = 0; l < n_layer; ++l) {
      const auto& o = cfg.unit_order[size_t(l)];
      std::vector<char> seen(size_t(d_ff / U), 0);
      bool ok = o.size() == seen.size() && U % cfg.down_format[size_t(l)].group == 0;
      for (size_t i = 0; ok && i < o.size(); ++i) {
        ok = o[i] >= 0 && size_t(o[i]) < seen.size() && !seen[size_t(o[i])];
        if (ok) seen[size_t(o[i])] = 1;
      }
      if (!ok) throw Error(where + ", layer " + std::to_string(l) + ": the neuron order is not a permutation of " +
                           std::to_string(d_ff / U) + " units");
    }
  }
  if (cfg.resident_bundles < 0 || cfg.resident_bundles > bundle_count() ||
      (cfg.resident_bundles && cfg.mode != FlashMode::DENSE_STREAM))
    throw Error(where + ": resident_bundles " + std::to_string(cfg.resident_bundles) + " must be in [0, " +
                std::to_string(bundle_count()) + "] and is for dense mode only");
  if (cfg.mode != FlashMode::RESIDENT) down_.resize(max_down);
  if (cfg.mode == FlashMode::RESIDENT) {
    uint64_t total = 0;
    for (int l = 0; l < n_layer; ++l) {
      all_offset_.push_back(total);
      total += layer_bytes(l);
    }
    all_ = AlignedBuffer(size_t(total));
    std::vector<ReadRange> rr;
    for (int l = 0; l < n_layer; ++l)
      rr.push_back(ReadRange{cfg.layer_offset[size_t(l)], layer_bytes(l), all_.data() + all_offset_[size_t(l)]});
    reader_->read(rr.data(), rr.size());
    // Rearrange each layer in place as [gate|up of bundle 0][gate|up of bundle 1]...[down matrix,
    // gathered once]: the per-token down gather of the streamed path is not needed here.
    std::vector<uint8_t> tmp;
    for (int l = 0; l < n_layer; ++l) {
      uint8_t* base = all_.data() + all_offset_[size_t(l)];
      tmp.assign(base, base + layer_bytes(l));
      const int nb = bundle_count();
      const size_t gu = 2 * gate_bytes(l, cfg.bundle_neurons);
      std::vector<DownPart> parts;
      const int64_t U = cfg.unit_order.empty() ? cfg.bundle_neurons : cfg.unit_neurons;
      for (int j = 0; j < nb; ++j) {
        const int64_t nj = bundle_size(j);
        const uint8_t* b = tmp.data() + size_t(j) * cfg.bundle_stride[size_t(l)];
        std::memcpy(base + size_t(j) * gu, b, 2 * gate_bytes(l, nj));
        bundle_parts(l, j, b + 2 * gate_bytes(l, nj), [&](int64_t u) { return int64_t(unit_src(l, int(u))) * U; }, parts);
      }
      gather_into(l, parts, d_ff, base + size_t(nb) * gu, nullptr);
      resident_down_.push_back(base + size_t(nb) * gu);
    }
  } else if (cfg.mode == FlashMode::DENSE_STREAM) {
    if (cfg.resident_bundles > 0) {
      uint64_t total = 0;
      for (int l = 0; l < n_layer; ++l) {
        hot_offset_.push_back(total);
        total += uint64_t(cfg.resident_bundles) * cfg.bundle_stride[size_t(l)];
      }
      hot_ = AlignedBuffer(size_t(total));
      std::vector<ReadRange> rr;
      for (int l = 0; l < n_layer; ++l)
        rr.push_back(ReadRange{cfg.layer_offset[size_t(l)], uint64_t(cfg.resident_bundles) * cfg.bundle_stride[size_t(l)],
                               hot_.data() + hot_offset_[size_t(l)]});
      reader_->read(rr.data(), rr.size());
    }
    if (max_layer > 0) {
      slot_[0] = AlignedBuffer(size_t(max_layer));
      slot_[1] = AlignedBuffer(size_t(max_layer));
    }
  } else {
    if (cfg.window < 1) throw Error(where + ": window must be >= 1, got " + std::to_string(cfg.window));
    if (!cfg.threshold.empty() && cfg.threshold.size() != L) throw Error(where + ": one threshold per layer needed");
    const int nb = bundle_count();
    capacity_ = cfg.slab_bundles > 0 ? std::min(cfg.slab_bundles, nb) : nb;
    if (cfg.predictor_rank > 0) {  // scores from the low-rank factors; no gate row stays resident
      const int64_t R = cfg.predictor_rank;
      if (pred_a.size() != L || pred_b.size() != L)
        throw Error(where + ": the predictor needs factors for " + std::to_string(n_layer) + " layers, got " +
                    std::to_string(pred_a.size()) + " and " + std::to_string(pred_b.size()));
      for (int l = 0; l < n_layer; ++l) {
        const Linear& a = pred_a[size_t(l)];
        const Linear& b = pred_b[size_t(l)];
        if (a.empty() || b.empty() || a.out_features() != d_ff || a.in_features() != R || b.out_features() != R ||
            b.in_features() != d_model)
          throw Error(where + ", layer " + std::to_string(l) + ": predictor factors must be (" + std::to_string(d_ff) +
                      " x " + std::to_string(R) + ") and (" + std::to_string(R) + " x " + std::to_string(d_model) + ")");
      }
      pred_a_ = std::move(pred_a);
      pred_b_ = std::move(pred_b);
    } else {  // the exact gate rows of every bundle, resident
      uint64_t total = 0;
      for (int l = 0; l < n_layer; ++l) {
        gate_offset_.push_back(total);
        total += uint64_t(nb) * gate_bytes(l, cfg.bundle_neurons);
      }
      gates_ = AlignedBuffer(size_t(total));
      std::vector<ReadRange> rr;
      for (int l = 0; l < n_layer; ++l)
        for (int j = 0; j < nb; ++j)
          rr.push_back(ReadRange{cfg.layer_offset[size_t(l)] + uint64_t(j) * cfg.bundle_stride[size_t(l)],
                                 gate_bytes(l, bundle_size(j)),
                                 gates_.data() + gate_offset_[size_t(l)] + size_t(j) * gate_bytes(l, cfg.bundle_neurons)});
      reader_->read(rr.data(), rr.size());
    }
    slabs_.resize(L);
    for (int l = 0; l < n_layer; ++l) {
      const size_t ud = 2 * gate_bytes(l, cfg.bundle_neurons) + down_bytes(l, cfg.bundle_neurons) -
                        slot_skip(l, cfg.bundle_neurons);
      ud_stride_.push_back((ud + FlashReader::kAlign - 1) / FlashReader::kAlign * FlashReader::kAlign);
      Slab& S = slabs_[size_t(l)];
      S.buf = AlignedBuffer(size_t(capacity_) * ud_stride_.back());
      S.slot_bundle.assign(size_t(capacity_), -1);
      S.bundle_slot.assign(size_t(nb), -1);
      S.last_active.assign(size_t(nb), INT64_MIN / 2);
    }
  }
}

FlashFfn::~FlashFfn() {
  // reads in flight target the slots: let them land before the buffers go
  for (auto& t : slot_ticket_) {
    try {
      if (t) reader_->wait(t);
    } catch (const Error&) {
    }
  }
}

uint64_t FlashFfn::memory_bytes() const {
  uint64_t slabs = 0;
  for (const Slab& S : slabs_) slabs += S.buf.size();
  return all_.size() + hot_.size() + slot_[0].size() + slot_[1].size() + down_.size() + gates_.size() + slabs;
}

FlashStats FlashFfn::stats() const {
  FlashStats s = stats_;
  s.bytes_read = reader_->bytes_issued() - bytes_at_reset_;
  return s;
}

void FlashFfn::reset_stats() {
  std::lock_guard<std::mutex> g(mu_);
  stats_ = FlashStats{};
  bytes_at_reset_ = reader_->bytes_issued();
}

const uint8_t* FlashFfn::stage(int l) {
  if (cfg_.mode == FlashMode::RESIDENT) return all_.data() + all_offset_[size_t(l)];
  if (cfg_.resident_bundles == bundle_count()) return nullptr;  // nothing streamed
  // the streamed part of a layer: bundles [resident_bundles, nb), one contiguous aligned range
  auto range = [&](int layer, uint8_t* dst) {
    const uint64_t skip = uint64_t(cfg_.resident_bundles) * cfg_.bundle_stride[size_t(layer)];
    return ReadRange{cfg_.layer_offset[size_t(layer)] + skip, layer_bytes(layer) - skip, dst};
  };
  int s = slot_layer_[0] == l ? 0 : (slot_layer_[1] == l ? 1 : -1);
  if (s < 0) {
    // not prefetched (first call, or a pass that stopped early): read it now into a free slot
    const int next = (l + 1) % cfg_.n_layer;
    s = slot_layer_[0] == next ? 1 : 0;
    if (slot_ticket_[s]) {
      try { reader_->wait(slot_ticket_[s]); } catch (const Error&) {}
      slot_ticket_[s].reset();
    }
    const ReadRange r = range(l, slot_[s].data());
    slot_layer_[s] = l;
    slot_ticket_[s] = reader_->submit(&r, 1);
  }
  if (slot_ticket_[s]) {
    const auto t0 = Clock::now();
    ReadTicket t = std::move(slot_ticket_[s]);
    slot_ticket_[s].reset();
    try {
      reader_->wait(t);
    } catch (...) {
      slot_layer_[s] = -1;
      throw;
    }
    stats_.io_wait_s += secs(t0, Clock::now());
  }
  // start the next layer's read into the other slot while this one computes
  const int next = (l + 1) % cfg_.n_layer, o = 1 - s;
  if (next != l && slot_layer_[o] != next) {
    if (slot_ticket_[o]) {
      try { reader_->wait(slot_ticket_[o]); } catch (const Error&) {}
      slot_ticket_[o].reset();
    }
    const ReadRange r = range(next, slot_[o].data());
    slot_layer_[o] = next;
    slot_ticket_[o] = reader_->submit(&r, 1);
  }
  return slot_[s].data();
}

void FlashFfn::forward(int layer, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool,
                       bool first_token) {
  std::lock_guard<std::mutex> g(mu_);
  if (layer < 0 || layer >= cfg_.n_layer) throw Error("flash FFN: layer " + std::to_string(layer) + " out of range");
  if (in.k() != cfg_.d_model) throw Error("flash FFN: input has " + std::to_string(in.k()) + " features, expected " +
                                          std::to_string(cfg_.d_model));
  if (recording_inputs_)
    inputs_[size_t(layer)].insert(inputs_[size_t(layer)].end(), in.x(), in.x() + in.n() * in.k());
  if (cfg_.mode == FlashMode::WINDOWED) {
    forward_windowed(layer, in, ff_a, ff_b, y, pool, first_token);
    ++stats_.layers_run;
    return;
  }
  const uint8_t* bundles = stage(layer);
  const auto t0 = Clock::now();
  compute(layer, bundles, in, ff_a, ff_b, y, pool);
  stats_.compute_s += secs(t0, Clock::now());
  ++stats_.layers_run;
}

void FlashFfn::compute(int l, const uint8_t* B, LinearInput& in, float* ff_a, float* ff_b, float* y,
                       ThreadPool& pool) {
  const KernelTable& kt = kernels();
  const LutFormat gu = cfg_.gu_format[size_t(l)];
  const int64_t n = in.n(), d = cfg_.d_model, dff = cfg_.d_ff;
  const int nb = bundle_count();
  const bool resident = cfg_.mode == FlashMode::RESIDENT;  // [gate|up]... then the gathered down
  const uint64_t stride = resident ? 2 * gate_bytes(l, cfg_.bundle_neurons) : cfg_.bundle_stride[size_t(l)];
  // bundle j: resident bundles first (DENSE_STREAM), the streamed rest in the staged range
  const int R = resident ? nb : cfg_.resident_bundles;
  const uint8_t* hot = resident ? B : hot_.data() + (R ? hot_offset_[size_t(l)] : 0);
  auto bundle = [&](int j) { return j < R ? hot + size_t(j) * stride : B + size_t(j - R) * stride; };

  // gate and up, bundle by bundle: rows n0..n0+nj of each matrix, whole 16-row blocks
  const LutAct* acts = in.lut(pool, lut_act_group(gu));
  LutGemvFn gemv = kt.lut_gemv[gu.kind];
  LutGemmFn gemm = kt.lut_gemm[gu.kind];
  pool.parallel_for(int64_t(nb) * 2, [&](int64_t task, int) {
    const int j = int(task / 2);
    const bool up = task & 1;
    const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
    const LutWeights w{bundle(j) + (up ? gate_bytes(l, nj) : 0), nj, d, gu};
    float* out = (up ? ff_b : ff_a) + n0;
    if (n == 1) gemv(&w, acts, 0, nj, out);
    else gemm(&w, acts, n, 0, nj, out, dff);
  });
  gated_activation(FfnAct::SILU, ff_a, ff_b, n * dff);

  const float* h = unpermute(l, ff_a, n);  // the down matrix is gathered in the original order
  if (resident) {
    down_matmul(l, h, n, dff, y, pool, resident_down_[size_t(l)]);
    return;
  }
  std::vector<DownPart> parts;
  const int64_t U = cfg_.unit_order.empty() ? cfg_.bundle_neurons : cfg_.unit_neurons;
  for (int j = 0; j < nb; ++j)
    bundle_parts(l, j, bundle(j) + 2 * gate_bytes(l, bundle_size(j)), [&](int64_t u) { return int64_t(unit_src(l, int(u))) * U; }, parts);
  gather_down(l, parts, dff, pool);
  down_matmul(l, h, n, dff, y, pool);
}

void FlashFfn::gather_into(int l, const std::vector<DownPart>& parts, int64_t K, uint8_t* D, ThreadPool* pool) {
  const LutFormat dn = cfg_.down_format[size_t(l)];
  const size_t gbb = lut_group_block_bytes(dn), row_block = lut_row_block_bytes(dn, K);
  auto one = [&](int64_t rb, int) {
    for (const DownPart& p : parts) {
      const size_t slice = size_t(p.n / dn.group) * gbb;
      std::memcpy(D + size_t(rb) * row_block + size_t(p.k0 / dn.group) * gbb, p.data + size_t(rb) * p.stride, slice);
    }
  };
  if (pool) pool->parallel_for(cfg_.d_model / kLutRows, one);
  else
    for (int64_t rb = 0; rb < cfg_.d_model / kLutRows; ++rb) one(rb, 0);
}

void FlashFfn::gather_down(int l, const std::vector<DownPart>& parts, int64_t K, ThreadPool& pool) {
  const auto tg = Clock::now();
  gather_into(l, parts, K, down_.data(), &pool);
  stats_.gather_s += secs(tg, Clock::now());
}

void FlashFfn::down_matmul(int l, const float* h, int64_t n, int64_t K, float* y, ThreadPool& pool,
                           const uint8_t* D) {
  const KernelTable& kt = kernels();
  const LutFormat dn = cfg_.down_format[size_t(l)];
  const int64_t d = cfg_.d_model, row_blocks = d / kLutRows;
  if (K == 0) {
    std::fill(y, y + n * d, 0.f);
    return;
  }
  down_in_.set(h, n, K);
  const LutAct* dacts = down_in_.lut(pool, lut_act_group(dn));
  const LutWeights W{D ? D : down_.data(), d, K, dn};
  const int64_t per = std::max<int64_t>(1, (row_blocks + pool.size() * 4 - 1) / (pool.size() * 4));
  const int64_t tasks = (row_blocks + per - 1) / per;
  LutGemvFn dgemv = kt.lut_gemv[dn.kind];
  LutGemmFn dgemm = kt.lut_gemm[dn.kind];
  pool.parallel_for(tasks, [&](int64_t c, int) {
    const int64_t r0 = c * per * kLutRows, r1 = std::min(d, (c + 1) * per * kLutRows);
    if (n == 1) dgemv(&W, dacts, r0, r1, y);
    else dgemm(&W, dacts, n, r0, r1, y, d);
  });
}

// ---- WINDOWED ------------------------------------------------------------------------------------

void FlashFfn::set_thresholds(const std::vector<float>& t) {
  std::lock_guard<std::mutex> g(mu_);
  if (!t.empty() && t.size() != size_t(cfg_.n_layer))
    throw Error("flash FFN: " + std::to_string(t.size()) + " thresholds for " + std::to_string(cfg_.n_layer) + " layers");
  cfg_.threshold = t;
}

void FlashFfn::record_scores(bool on, bool inputs) {
  std::lock_guard<std::mutex> g(mu_);
  recording_ = on;
  recording_inputs_ = on && inputs;
  if (on) {
    scores_.assign(size_t(cfg_.n_layer), {});
    exact_scores_.assign(size_t(cfg_.n_layer), {});
  }
  if (recording_inputs_) inputs_.assign(size_t(cfg_.n_layer), {});
}

std::vector<std::vector<float>> FlashFfn::take_scores(bool exact) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<std::vector<float>> out;
  std::vector<std::vector<float>>& src = exact ? exact_scores_ : scores_;
  out.swap(src);
  if (recording_) src.assign(size_t(cfg_.n_layer), {});
  return out;
}

std::vector<std::vector<float>> FlashFfn::take_inputs() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<std::vector<float>> out;
  out.swap(inputs_);
  if (recording_inputs_) inputs_.assign(size_t(cfg_.n_layer), {});
  return out;
}

void FlashFfn::forward_windowed(int l, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool,
                                bool all_active) {
  const KernelTable& kt = kernels();
  const LutFormat gu = cfg_.gu_format[size_t(l)];
  const int64_t n = in.n(), d = cfg_.d_model, dff = cfg_.d_ff;
  const int nb = bundle_count();
  const LutAct* acts = in.lut(pool, lut_act_group(gu));
  LutGemvFn gemv = kt.lut_gemv[gu.kind];
  LutGemmFn gemm = kt.lut_gemm[gu.kind];
  auto run = [&](const uint8_t* w_bytes, int64_t nj, float* out) {
    const LutWeights w{w_bytes, nj, d, gu};
    if (n == 1) gemv(&w, acts, 0, nj, out);
    else gemm(&w, acts, n, 0, nj, out, dff);
  };
  // 1. the whole gate into ff_a: predicted, A (B x), or exact from the resident gate rows
  const auto t0 = Clock::now();
  const bool predict = !pred_a_.empty();
  if (predict) {
    const int64_t R = cfg_.predictor_rank;
    pred_z_.resize(size_t(n * R));
    pred_b_[size_t(l)].forward(in, pred_z_.data(), pool);
    pred_in_.set(pred_z_.data(), n, R);
    pred_a_[size_t(l)].forward(pred_in_, ff_a, pool);
  } else {
    const size_t gstride = gate_bytes(l, cfg_.bundle_neurons);
    const uint8_t* G = gates_.data() + gate_offset_[size_t(l)];
    pool.parallel_for(nb, [&](int64_t j, int) { run(G + size_t(j) * gstride, bundle_size(int(j)), ff_a + j * cfg_.bundle_neurons); });
  }

  // 2. active bundles: max over the batch's tokens and the bundle's neurons of |silu(gate)|
  const auto tc = Clock::now();
  Slab& S = slabs_[size_t(l)];
  const float thr = cfg_.threshold.empty() || all_active ? -1.f : cfg_.threshold[size_t(l)];
  score_tmp_.assign(size_t(nb) * size_t(n), 0.f);
  std::vector<int> act;
  for (int j = 0; j < nb; ++j) {
    const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
    float best = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      float m = 0.f;
      const float* g = ff_a + t * dff + n0;
      for (int64_t i = 0; i < nj; ++i) m = std::max(m, std::fabs(g[i] / (1.f + std::exp(-g[i]))));
      score_tmp_[size_t(t) * size_t(nb) + size_t(j)] = m;
      best = std::max(best, m);
    }
    if (thr < 0.f || best > thr) act.push_back(j);
  }
  if (recording_) {
    scores_[size_t(l)].insert(scores_[size_t(l)].end(), score_tmp_.begin(), score_tmp_.end());
    if (predict) exact_tmp_.assign(score_tmp_.size(), NAN);  // filled below for the active bundles
    else exact_scores_[size_t(l)].insert(exact_scores_[size_t(l)].end(), score_tmp_.begin(), score_tmp_.end());
  }
  const int64_t tok = ++S.tokens;
  for (int j : act) S.last_active[size_t(j)] = tok;

  // 3. window: drop bundles not active in the last `window` tokens (swap-with-last delete)
  const size_t ud = ud_stride_[size_t(l)];
  auto evict = [&](int s) {
    const int b = S.slot_bundle[size_t(s)], last = S.used - 1;
    S.bundle_slot[size_t(b)] = -1;
    if (s != last) {
      std::memcpy(S.buf.data() + size_t(s) * ud, S.buf.data() + size_t(last) * ud, ud);
      S.slot_bundle[size_t(s)] = S.slot_bundle[size_t(last)];
      S.bundle_slot[size_t(S.slot_bundle[size_t(s)])] = s;
    }
    --S.used;
    ++stats_.bundles_evicted;
  };
  for (int s = 0; s < S.used;) {
    if (tok - S.last_active[size_t(S.slot_bundle[size_t(s)])] >= cfg_.window) evict(s);
    else ++s;
  }
  stats_.cache_s += secs(tc, Clock::now());
  stats_.bundles_active += act.size();

  // 4. rounds: each takes the cached active bundles plus as many misses as the slab has room for
  //    (evicting the least recently active bundles not needed in this round), reads the misses
  //    synchronously, runs up + SwiGLU, and places the bundles' down K-slices and activations at
  //    their K offsets (ascending bundle order). One round unless the slab is smaller than the
  //    active set.
  //    K positions: the active bundles' units in their original order (so with every bundle active
  //    the down matrix is the resident one byte for byte)
  const Units U{cfg_.unit_order.empty() ? cfg_.bundle_neurons : cfg_.unit_neurons, dff};
  std::vector<std::pair<int, int64_t>> units;  // (original unit, file unit)
  for (int j : act) {
    const int64_t n0 = int64_t(j) * cfg_.bundle_neurons;
    for (int64_t u = U.first(n0); u < U.end(n0, bundle_size(j)); ++u) units.emplace_back(unit_src(l, int(u)), u);
  }
  std::sort(units.begin(), units.end());
  std::vector<int64_t> kpos(size_t(U.end(0, dff)), -1);
  int64_t K = 0;
  for (const auto& su : units) {
    kpos[size_t(su.second)] = K;
    K += U.count(su.second);
  }
  h_.resize(size_t(n * K));
  std::vector<char> done(act.size(), 0), in_round(size_t(nb), 0);
  size_t n_done = 0;
  while (n_done < act.size()) {
    const auto tr = Clock::now();
    std::vector<size_t> round, miss;
    for (size_t i = 0; i < act.size(); ++i)
      if (!done[i] && S.bundle_slot[size_t(act[i])] >= 0) { round.push_back(i); in_round[size_t(act[i])] = 1; }
    for (size_t i = 0; i < act.size(); ++i) {
      if (done[i] || S.bundle_slot[size_t(act[i])] >= 0) continue;
      if (S.used == capacity_) {  // victim: a slot not in this round; not-active-now before already-done
        int victim = -1;
        int64_t best = INT64_MAX;
        for (int s = 0; s < S.used; ++s) {
          const int b = S.slot_bundle[size_t(s)];
          if (in_round[size_t(b)]) continue;
          const int64_t key = S.last_active[size_t(b)] == tok ? INT64_MAX - 1 : S.last_active[size_t(b)];
          if (key < best) { best = key; victim = s; }
        }
        if (victim < 0) break;  // the slab is full of this round's bundles
        evict(victim);
      }
      const int s = S.used++;
      S.slot_bundle[size_t(s)] = act[i];
      S.bundle_slot[size_t(act[i])] = s;
      in_round[size_t(act[i])] = 1;
      round.push_back(i);
      miss.push_back(i);
    }
    stats_.cache_s += secs(tr, Clock::now());
    if (!miss.empty()) {
      std::vector<ReadRange> rr;
      for (size_t i : miss) {
        const int j = act[i];
        const int64_t nj = bundle_size(j);
        const size_t skip = slot_skip(l, nj);
        const uint64_t off = cfg_.layer_offset[size_t(l)] + uint64_t(j) * cfg_.bundle_stride[size_t(l)] + skip;
        rr.push_back(ReadRange{off, 2 * gate_bytes(l, nj) + down_bytes(l, nj) - skip,
                               S.buf.data() + size_t(S.bundle_slot[size_t(j)]) * ud});
      }
      const auto ti = Clock::now();
      reader_->read(rr.data(), rr.size());
      stats_.io_wait_s += secs(ti, Clock::now());
      stats_.bundles_loaded += miss.size();
    }
    // (predictor: exact gate rows into ff_a's columns n0..,) up rows into ff_b's columns n0..,
    // SwiGLU into ff_a, activations to h_ at k0 (n x K)
    const auto t1 = Clock::now();
    std::vector<std::vector<DownPart>> rparts(round.size());
    pool.parallel_for(int64_t(round.size()), [&](int64_t r, int) {
      const size_t i = round[size_t(r)];
      const int j = act[i];
      const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
      // the slot holds the bundle from byte slot_skip on: [gate|]up|down
      const uint8_t* slot = S.buf.data() + size_t(S.bundle_slot[size_t(j)]) * ud;
      const size_t up_at = gate_bytes(l, nj) - slot_skip(l, nj);
      bundle_parts(l, j, slot + up_at + gate_bytes(l, nj), [&](int64_t u) { return kpos[size_t(u)]; }, rparts[size_t(r)]);
      if (predict) {
        run(slot, nj, ff_a + n0);
        if (recording_)
          for (int64_t t = 0; t < n; ++t) {
            float m = 0.f;
            const float* g = ff_a + t * dff + n0;
            for (int64_t i = 0; i < nj; ++i) m = std::max(m, std::fabs(g[i] / (1.f + std::exp(-g[i]))));
            exact_tmp_[size_t(t) * size_t(nb) + size_t(j)] = m;
          }
      }
      run(slot + up_at, nj, ff_b + n0);
      for (int64_t t = 0; t < n; ++t) {
        gated_activation(FfnAct::SILU, ff_a + t * dff + n0, ff_b + t * dff + n0, nj);
        for (int64_t u = U.first(n0); u < U.end(n0, nj); ++u)
          std::memcpy(h_.data() + t * K + kpos[size_t(u)], ff_a + t * dff + u * U.size, size_t(U.count(u)) * sizeof(float));
      }
    });
    std::vector<DownPart> parts;
    for (auto& v : rparts) parts.insert(parts.end(), v.begin(), v.end());
    stats_.compute_s += secs(t1, Clock::now());
    gather_down(l, parts, K, pool);
    for (size_t i : round) {
      done[i] = 1;
      in_round[size_t(act[i])] = 0;
    }
    n_done += round.size();
  }
  if (recording_ && predict) exact_scores_[size_t(l)].insert(exact_scores_[size_t(l)].end(), exact_tmp_.begin(), exact_tmp_.end());
  stats_.compute_s += secs(t0, tc);
  const auto t2 = Clock::now();
  down_matmul(l, h_.data(), n, K, y, pool);
  stats_.compute_s += secs(t2, Clock::now());
}

}  // namespace lutllm
