// Linear layer execution: row-chunked parallel calls into the selected registry kernel.
#include "linear.h"

#include <algorithm>
#include <mutex>
#include <string>

#include "error.h"

namespace lutllm {

const ActQ8* LinearInput::q8(ThreadPool& pool) {
  if (q8_ready_) return q8_.data();
  const int64_t blocks = k_ / QK32;
  if (int64_t(q8_.size()) < n_ * blocks) q8_.resize(size_t(n_ * blocks));
  QuantizeActFn quant = kernels().quantize_act;
  const float* x = x_;
  ActQ8* out = q8_.data();
  const int64_t k = k_;
  pool.parallel_for(n_, [&](int64_t t, int) { quant(x + t * k, out + t * blocks, k); });
  q8_ready_ = true;
  return q8_.data();
}

const LutAct* LinearInput::lut(ThreadPool& pool, int32_t ag) {
  if (lut_ag_ == ag) return lut_act_.data();
  const KernelTable& kt = kernels();
  const int64_t n = n_, k = k_, groups = k / ag;
  lut_tab_.resize(size_t(n) * lut_act_tab_bytes(k));
  lut_scale_.resize(size_t(n * groups));
  lut_sum16_.resize(size_t(n * (k / 16)));
  lut_act_.resize(size_t(n));
  LutBuildFn build = kt.lut_build;
  const float* x = x_;
  pool.parallel_for(n, [&](int64_t t, int) {
    int8_t* tab = lut_tab_.data() + size_t(t) * lut_act_tab_bytes(k);
    float* scale = lut_scale_.data() + t * groups;
    float* sum16 = lut_sum16_.data() + t * (k / 16);
    build(x + t * k, k, ag, 0, groups, tab, scale, sum16);
    lut_act_[size_t(t)] = LutAct{tab, scale, sum16, k, ag, 0};
  });
  lut_ag_ = ag;
  return lut_act_.data();
}

namespace {
// Repack GGUF blocks into the LUT layout in chunks of kRepackRows rows (whole row blocks): each
// chunk's temporaries (codes, scales) stay small and in cache, and chunks run in parallel on pool.
// lut_repack_ggml on a chunk writes exactly that chunk's row blocks, so the result is the one-pass one.
constexpr int64_t kRepackRows = 4 * kLutRows;

void repack_rows(const WeightTensor& w, const LutFormat& fmt, uint8_t* out, ThreadPool* pool) {
  const int64_t rows = w.rows(), k = w.cols(), n = (rows + kRepackRows - 1) / kRepackRows;
  const size_t rbb = lut_row_block_bytes(fmt, k);
  std::mutex mu;
  std::string first_err;
  auto task = [&](int64_t c, int) {
    const int64_t r0 = c * kRepackRows, nr = std::min(kRepackRows, rows - r0);
    std::string err;
    if (!lut_repack_ggml(w.type, w.data + size_t(r0) * w.row_bytes, nr, k, fmt, out + size_t(r0 / kLutRows) * rbb, &err)) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_err.empty()) first_err = err.empty() ? "repack failed" : err;
    }
  };
  if (pool && n > 1) pool->parallel_for(n, task);
  else
    for (int64_t c = 0; c < n; ++c) task(c, 0);
  if (!first_err.empty()) throw Error("tensor '" + w.name + "': cannot repack for table lookup: " + first_err);
}
}  // namespace

Linear::Linear(const WeightTensor* w, bool allow_lut, ThreadPool* pool) : w_(w) {
  const KernelTable& kt = kernels();
  const int t = int(w->type);
  LutFormat fmt{};
  std::string why;
  if (w->packed()) {  // already in the LUT layout (lutllm quantize): run it from the mapping as is
    fmt = w->lut;
    if (!kt.lut_build || !kt.lut_gemv[fmt.kind] || !kt.lut_gemm[fmt.kind])
      throw Error("tensor '" + w->name + "': no table-lookup kernel for packed LUT " + lut_kind_name(fmt.kind));
    why = lut_check_format(fmt, w->rows(), w->cols());
    if (!why.empty()) throw Error("tensor '" + w->name + "': " + why);
    lut_ = LutWeights{w->data, w->rows(), w->cols(), fmt};
    path_ = Path::LUT;
  } else if (allow_lut && kt.lut_build && lut_format_for_ggml(w->type, kLutTernaryRepackGroup, &fmt, &why) && kt.lut_gemv[fmt.kind] &&
      kt.lut_gemm[fmt.kind] && lut_check_format(fmt, w->rows(), w->cols()).empty()) {
    lut_packed_ = std::make_shared<std::vector<uint8_t>>(lut_packed_bytes(fmt, w->rows(), w->cols()));
    repack_rows(*w, fmt, lut_packed_->data(), pool);
    lut_ = LutWeights{lut_packed_->data(), w->rows(), w->cols(), fmt};
    path_ = Path::LUT;
  } else if (kt.matmul_q8[t] && w->cols() % QK32 == 0) path_ = Path::Q8;
  else if (kt.matmul_f32[t]) path_ = Path::F32;
  else if (kt.dequant[t]) path_ = Path::DEQUANT;
  else throw Error("tensor '" + w->name + "': type " + type_traits(w->type).name + " is not supported by this runtime");
}

namespace {
constexpr int kMaxTasks = 64;  // per layer and pool loop

// Guided split of `units` 16-row blocks over `threads`: each task takes 1/(2 threads) of what is left,
// so the first tasks are large and the last ones a block or two: whichever thread ends its last
// task first waits at most that long for the other (equal chunks left up to a whole chunk).
int64_t guided_bounds(int64_t units, int threads, int64_t* bound) {
  int64_t tasks = 0, at = 0;
  bound[0] = 0;
  while (at < units) {
    const int64_t left = units - at;
    const int64_t c = threads <= 1 || tasks == kMaxTasks - 1 ? left : (left + 2 * threads - 1) / (2 * threads);
    at += c;
    bound[++tasks] = at;
  }
  return tasks;
}
}  // namespace

struct Linear::Plan {
  float* y = nullptr;
  int64_t n = 0, rows = 0, tasks = 0;
  int64_t bound[kMaxTasks + 1] = {};  // task i: 16-row blocks [bound[i], bound[i + 1])
  const LutAct* acts = nullptr;   // LUT
  const ActQ8* xq = nullptr;      // Q8
  const float* x = nullptr;       // F32, DEQUANT
  int64_t row_begin(int64_t task) const { return bound[task] * kLutRows; }
  int64_t row_end(int64_t task) const { return std::min(rows, bound[task + 1] * kLutRows); }
};

// Prepares the input form this layer's path reads (built at most once per input) and splits the
// rows into tasks (whole 16-row blocks: LUT kernels compute blocks whole).
void Linear::plan(LinearInput& in, float* y, ThreadPool& pool, Plan* p) const {
  const WeightTensor& w = *w_;
  const int64_t rows = w.rows(), k = w.cols();
  if (path_ == Path::NONE) throw Error("linear layer used before it was bound to a weight");
  if (in.k() != k) throw Error("tensor '" + w.name + "': input has " + std::to_string(in.k()) + " features, weight expects " + std::to_string(k));
  p->y = y;
  p->n = in.n();
  p->rows = rows;
  p->tasks = guided_bounds(lut_row_blocks(rows), pool.size(), p->bound);
  if (path_ == Path::LUT) p->acts = in.lut(pool, lut_act_group(lut_.fmt));  // k-quant: one table scale per 256
  else if (path_ == Path::Q8) p->xq = in.q8(pool);
  else p->x = in.x();
}

void Linear::run_task(const Plan& p, int64_t c) const {
  const WeightTensor& w = *w_;
  const int64_t rows = w.rows(), k = w.cols(), n = p.n;
  float* y = p.y;
  const KernelTable& kt = kernels();
  const int64_t r0 = p.row_begin(c), r1 = p.row_end(c);
  if (path_ == Path::LUT) {
    if (n == 1) kt.lut_gemv[lut_.fmt.kind](&lut_, p.acts, r0, r1, y);
    else kt.lut_gemm[lut_.fmt.kind](&lut_, p.acts, n, r0, r1, y, rows);
    return;
  }
  switch (path_) {
    case Path::Q8:
      kt.matmul_q8[int(w.type)](w.data + size_t(r0) * w.row_bytes, w.row_bytes, r1 - r0, k, p.xq, k / QK32, n, y + r0, rows);
      break;
    case Path::F32:
      kt.matmul_f32[int(w.type)](w.data + size_t(r0) * w.row_bytes, w.row_bytes, r1 - r0, k, p.x, k, n, y + r0, rows);
      break;
    case Path::DEQUANT: {
      DequantRowFn dq = kt.dequant[int(w.type)];
      std::vector<float> row(static_cast<size_t>(k));
      for (int64_t r = r0; r < r1; ++r) {
        dq(w.data + size_t(r) * w.row_bytes, row.data(), k);
        for (int64_t t = 0; t < n; ++t) {
          const float* xt = p.x + t * k;
          double acc = 0;
          for (int64_t j = 0; j < k; ++j) acc += double(row[size_t(j)]) * xt[j];
          y[t * rows + r] = float(acc);
        }
      }
      break;
    }
    default:
      break;
  }
}

void Linear::forward(LinearInput& in, float* y, ThreadPool& pool) const {
  const Linear* self = this;
  forward_many(&self, &y, 1, in, pool);
}

void Linear::forward_many(const Linear* const* layers, float* const* ys, int count, LinearInput& in, ThreadPool& pool,
                          const RowEpilogue* epilogue) {
  constexpr int kMax = 4;
  if (count < 1 || count > kMax) throw Error("forward_many takes 1 to 4 layers");
  bool same_rows = true;
  int32_t ag = 0;  // LUT activation group of the first LUT layer
  bool one_ag = true;
  for (int i = 0; i < count; ++i) {
    same_rows = same_rows && layers[i]->out_features() == layers[0]->out_features();
    if (layers[i]->path_ != Path::LUT) continue;
    const int32_t g = lut_act_group(layers[i]->lut_.fmt);
    one_ag = one_ag && (ag == 0 || g == ag);
    if (ag == 0) ag = g;
  }
  if (epilogue && !same_rows) throw Error("forward_many: a row epilogue needs layers with equal output sizes");
  // One shared LinearInput holds LUT tables for one activation group size at a time: layers that
  // need different ones run one after the other.
  if (!one_ag) {
    for (int j = 0; j < count; ++j) forward_many(&layers[j], &ys[j], 1, in, pool);
    if (epilogue) (*epilogue)(0, layers[0]->out_features());
    return;
  }
  Plan plans[kMax];
  for (int i = 0; i < count; ++i) layers[i]->plan(in, ys[i], pool, &plans[i]);
  if (epilogue) {  // lockstep: task c computes the same rows of every layer, then their epilogue
    pool.parallel_for(plans[0].tasks, [&](int64_t task, int) {
      for (int i = 0; i < count; ++i) layers[i]->run_task(plans[i], task);
      (*epilogue)(plans[0].row_begin(task), plans[0].row_end(task));
    });
    return;
  }
  int64_t first[kMax + 1] = {0};
  for (int i = 0; i < count; ++i) first[i + 1] = first[i] + plans[i].tasks;
  pool.parallel_for(first[count], [&](int64_t task, int) {
    int i = 0;
    while (task >= first[i + 1]) ++i;
    layers[i]->run_task(plans[i], task - first[i]);
  });
}

}  // namespace lutllm
