// FlashFfn: stages a layer's neuron bundles (resident copy, or double-buffered streaming reads) and
// runs the SwiGLU FFN on them with the same LUT kernels, tables and accumulation order as Linear.
// Gate/up run per bundle (whole 16-row blocks, so rows are unaffected by the split); down needs its
// K groups in order, so the bundles' down K-slices are gathered into one packed (d x d_ff) matrix.
#include "flash_ffn.h"

#include <algorithm>
#include <chrono>
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

FlashFfn::FlashFfn(const FlashFfnConfig& cfg, int n_layer, int d_model, int d_ff) : cfg_(cfg) {
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
    max_layer = std::max(max_layer, layer_bytes(l));
    max_down = std::max(max_down, lut_packed_bytes(dn, d_model, d_ff));
  }
  down_.resize(max_down);
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
  } else {
    slot_[0] = AlignedBuffer(size_t(max_layer));
    slot_[1] = AlignedBuffer(size_t(max_layer));
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

uint64_t FlashFfn::memory_bytes() const { return all_.size() + slot_[0].size() + slot_[1].size() + down_.size(); }

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
  int s = slot_layer_[0] == l ? 0 : (slot_layer_[1] == l ? 1 : -1);
  if (s < 0) {
    // not prefetched (first call, or a pass that stopped early): read it now into a free slot
    const int next = (l + 1) % cfg_.n_layer;
    s = slot_layer_[0] == next ? 1 : 0;
    if (slot_ticket_[s]) {
      try { reader_->wait(slot_ticket_[s]); } catch (const Error&) {}
      slot_ticket_[s].reset();
    }
    const ReadRange r{cfg_.layer_offset[size_t(l)], layer_bytes(l), slot_[s].data()};
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
    const ReadRange r{cfg_.layer_offset[size_t(next)], layer_bytes(next), slot_[o].data()};
    slot_layer_[o] = next;
    slot_ticket_[o] = reader_->submit(&r, 1);
  }
  return slot_[s].data();
}

void FlashFfn::forward(int layer, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool) {
  std::lock_guard<std::mutex> g(mu_);
  if (layer < 0 || layer >= cfg_.n_layer) throw Error("flash FFN: layer " + std::to_string(layer) + " out of range");
  if (in.k() != cfg_.d_model) throw Error("flash FFN: input has " + std::to_string(in.k()) + " features, expected " +
                                          std::to_string(cfg_.d_model));
  const uint8_t* bundles = stage(layer);
  const auto t0 = Clock::now();
  compute(layer, bundles, in, ff_a, ff_b, y, pool);
  stats_.compute_s += secs(t0, Clock::now());
  ++stats_.layers_run;
}

void FlashFfn::compute(int l, const uint8_t* B, LinearInput& in, float* ff_a, float* ff_b, float* y,
                       ThreadPool& pool) {
  const KernelTable& kt = kernels();
  const LutFormat gu = cfg_.gu_format[size_t(l)], dn = cfg_.down_format[size_t(l)];
  const int64_t n = in.n(), d = cfg_.d_model, dff = cfg_.d_ff;
  const int nb = bundle_count();
  const uint64_t stride = cfg_.bundle_stride[size_t(l)];

  // gate and up, bundle by bundle: rows n0..n0+nj of each matrix, whole 16-row blocks
  const LutAct* acts = in.lut(pool, gu.group);
  LutGemvFn gemv = kt.lut_gemv[gu.kind];
  LutGemmFn gemm = kt.lut_gemm[gu.kind];
  pool.parallel_for(int64_t(nb) * 2, [&](int64_t task, int) {
    const int j = int(task / 2);
    const bool up = task & 1;
    const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
    const LutWeights w{B + size_t(j) * stride + (up ? gate_bytes(l, nj) : 0), nj, d, gu};
    float* out = (up ? ff_b : ff_a) + n0;
    if (n == 1) gemv(&w, acts, 0, nj, out);
    else gemm(&w, acts, n, 0, nj, out, dff);
  });
  silu_mul(ff_a, ff_b, n * dff);

  // down: gather each bundle's K-slice into its place in every row block, then one LUT matmul
  const auto tg = Clock::now();
  const size_t gbb = lut_group_block_bytes(dn), row_block = lut_row_block_bytes(dn, dff);
  const int64_t row_blocks = d / kLutRows;
  uint8_t* D = down_.data();
  pool.parallel_for(row_blocks, [&](int64_t rb, int) {
    uint8_t* dst = D + size_t(rb) * row_block;
    for (int j = 0; j < nb; ++j) {
      const int64_t n0 = int64_t(j) * cfg_.bundle_neurons, nj = bundle_size(j);
      const size_t slice = size_t(nj / dn.group) * gbb;
      const uint8_t* src = B + size_t(j) * stride + 2 * gate_bytes(l, nj) + size_t(rb) * slice;
      std::memcpy(dst + size_t(n0 / dn.group) * gbb, src, slice);
    }
  });
  stats_.gather_s += secs(tg, Clock::now());
  down_in_.set(ff_a, n, dff);
  const LutAct* dacts = down_in_.lut(pool, dn.group);
  const LutWeights W{D, d, dff, dn};
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

}  // namespace lutllm
