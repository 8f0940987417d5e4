// The C API of include/lutllm.h (liblutllm.so) with a small bounded GGUF header reader that turns a
// file into the runtime's ModelConfig + tensor table. No tokenizer and no chat templates here.
#include "include/lutllm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "error.h"
#include "lutllm/ggml_types.h"
#include "model.h"
#include "weights.h"

using namespace lutllm;

struct lutllm_model {
  std::shared_ptr<Model> model;
  std::unique_ptr<Context> ctx;
  int32_t eos = -1;
};

namespace {

thread_local std::string g_error;

int32_t fail(int32_t code, const std::string& msg) {
  g_error = msg;
  return code;
}

constexpr int32_t kMaxCtx = 1 << 20;
constexpr uint64_t kMaxCount = 1u << 24;  // metadata pairs, tensors, array elements

// One scalar metadata value (the reader keeps numbers and strings, skips arrays but their length).
struct MetaValue {
  enum Kind { INT, FLOAT, STRING, ARRAY } kind = INT;
  int64_t i = 0;
  double f = 0;
  std::string s;
  uint64_t n = 0;  // array length
  std::vector<int64_t> ints;        // array items, kept only for lutllm.quant.* keys
  std::vector<std::string> strs;
};

class Reader {
 public:
  Reader(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  size_t pos() const { return off_; }
  [[noreturn]] void bad(const std::string& what) const {
    throw Error(path_ + ": invalid GGUF at byte " + std::to_string(off_) + ": " + what);
  }
  const uint8_t* take(uint64_t k, const char* what) {
    if (k > n_ - off_) bad(std::string("truncated while reading ") + what);
    const uint8_t* r = p_ + off_;
    off_ += size_t(k);
    return r;
  }
  template <class T>
  T get(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string str(const char* what) {
    const uint64_t len = get<uint64_t>(what);
    const uint8_t* s = take(len, what);
    return std::string(reinterpret_cast<const char*>(s), size_t(len));
  }
  MetaValue value(uint32_t type, int depth, bool keep_items = false) {
    MetaValue v;
    switch (type) {
      case 0: v.i = get<uint8_t>("u8"); break;
      case 1: v.i = get<int8_t>("i8"); break;
      case 2: v.i = get<uint16_t>("u16"); break;
      case 3: v.i = get<int16_t>("i16"); break;
      case 4: v.i = get<uint32_t>("u32"); break;
      case 5: v.i = get<int32_t>("i32"); break;
      case 6: v.kind = MetaValue::FLOAT; v.f = get<float>("f32"); break;
      case 7: v.i = get<uint8_t>("bool"); break;
      case 8: v.kind = MetaValue::STRING; v.s = str("string"); break;
      case 9: {
        if (depth > 2) bad("arrays nested too deeply");
        const uint32_t et = get<uint32_t>("array type");
        const uint64_t n = get<uint64_t>("array length");
        if (n > kMaxCount) bad("array too long");
        for (uint64_t k = 0; k < n; ++k) {
          MetaValue item = value(et, depth + 1);
          if (keep_items && item.kind == MetaValue::INT) v.ints.push_back(item.i);
          if (keep_items && item.kind == MetaValue::STRING) v.strs.push_back(std::move(item.s));
        }
        v.kind = MetaValue::ARRAY;
        v.n = n;
        break;
      }
      case 10: {
        const uint64_t u = get<uint64_t>("u64");
        if (u > uint64_t(std::numeric_limits<int64_t>::max())) bad("u64 value too large");
        v.i = int64_t(u);
        break;
      }
      case 11: v.i = get<int64_t>("i64"); break;
      case 12: v.kind = MetaValue::FLOAT; v.f = get<double>("f64"); break;
      default: bad("unknown metadata value type " + std::to_string(type));
    }
    return v;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
  std::string path_;
};

struct Gguf {
  std::map<std::string, MetaValue> meta;
  std::vector<TensorDesc> tensors;
};

// Packed LUT tensors written by `lutllm quantize`: give them their logical shape and format; the
// weight store checks each layout against its bytes.
void apply_lut_layouts(Gguf& g, const std::string& path) {
  auto ver = g.meta.find("lutllm.quant.version");
  auto names = g.meta.find("lutllm.quant.tensors");
  auto lay = g.meta.find("lutllm.quant.layouts");
  if (ver == g.meta.end() && names == g.meta.end() && lay == g.meta.end()) return;
  if (ver == g.meta.end() || names == g.meta.end() || lay == g.meta.end())
    throw Error(path + ": packed LUT metadata (lutllm.quant.*) is incomplete");
  if (ver->second.kind != MetaValue::INT || ver->second.i != 1)
    throw Error(path + ": packed LUT layout version is not supported (this runtime reads version 1)");
  const auto& ns = names->second.strs;
  const auto& v = lay->second.ints;
  if (names->second.n != ns.size() || v.size() != 6 * ns.size())
    throw Error(path + ": lutllm.quant.layouts must hold 6 integers for each name in lutllm.quant.tensors");
  for (size_t i = 0; i < ns.size(); ++i) {
    auto it = std::find_if(g.tensors.begin(), g.tensors.end(), [&](const TensorDesc& d) { return d.name == ns[i]; });
    if (it == g.tensors.end()) throw Error(path + ": packed tensor '" + ns[i] + "' is not in the tensor table");
    const int64_t* f = &v[6 * i];
    for (int j = 0; j < 4; ++j)
      if (f[j] < 0 || f[j] > 1024) throw Error(path + ": packed tensor '" + ns[i] + "' has an invalid LUT layout");
    it->lut = LutFormat{int32_t(f[0]), int32_t(f[1]), int32_t(f[2]), int32_t(f[3])};
    it->shape = {f[4], f[5]};
  }
}

Gguf read_gguf(const std::string& path) {
  MappedFile f(path);
  Reader r(f.data(), f.size(), path);
  const uint32_t magic = r.get<uint32_t>("magic");
  if (magic != 0x46554747u) throw Error(path + ": not a GGUF file (bad magic)");
  const uint32_t version = r.get<uint32_t>("version");
  if (version != 2 && version != 3) throw Error(path + ": GGUF version " + std::to_string(version) + " is not supported");
  const uint64_t n_tensors = r.get<uint64_t>("tensor count"), n_kv = r.get<uint64_t>("metadata count");
  if (n_tensors > kMaxCount || n_kv > kMaxCount) r.bad("implausible tensor or metadata count");
  Gguf g;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str("metadata key");
    const uint32_t type = r.get<uint32_t>("metadata type");
    const bool keep = key.rfind("lutllm.quant.", 0) == 0;  // packed LUT layouts (python/lutllm/gguf_file.py)
    g.meta[key] = r.value(type, 0, keep);
  }
  uint64_t alignment = 32;
  if (auto it = g.meta.find("general.alignment"); it != g.meta.end()) {
    if (it->second.kind != MetaValue::INT || it->second.i <= 0 || (it->second.i & (it->second.i - 1)))
      throw Error(path + ": general.alignment must be a positive power of two");
    alignment = uint64_t(it->second.i);
  }
  struct Info { std::string name; uint32_t type; std::vector<int64_t> shape; uint64_t off, nbytes; };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info t;
    t.name = r.str("tensor name");
    const uint32_t nd = r.get<uint32_t>("tensor rank");
    if (nd == 0 || nd > 4) r.bad("tensor '" + t.name + "' has rank " + std::to_string(nd));
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t e = r.get<uint64_t>("tensor dimension");
      if (e == 0 || e > (uint64_t(1) << 40) || n_el > (uint64_t(1) << 48) / e) r.bad("tensor '" + t.name + "' has a bad shape");
      n_el *= e;
      t.shape.push_back(int64_t(e));
    }
    t.type = r.get<uint32_t>("tensor type");
    if (!type_known(t.type)) r.bad("tensor '" + t.name + "' has unknown type " + std::to_string(t.type));
    const TypeTraits& tt = type_traits(t.type);
    if (tt.block_bytes == 0 || tt.block_elems <= 0 || n_el % uint64_t(tt.block_elems))
      r.bad("tensor '" + t.name + "' has a type or size lutllm cannot decode");
    t.nbytes = n_el / uint64_t(tt.block_elems) * uint64_t(tt.block_bytes);
    t.off = r.get<uint64_t>("tensor offset");
    if (t.off % alignment) r.bad("tensor '" + t.name + "' is not aligned");
    infos.push_back(std::move(t));
  }
  const uint64_t data = (uint64_t(r.pos()) + alignment - 1) / alignment * alignment;
  for (auto& t : infos) {
    if (t.off > f.size() || t.nbytes > f.size() - t.off || data > f.size() - t.off - t.nbytes)
      throw Error(path + ": tensor '" + t.name + "' lies past the end of the file");
    g.tensors.push_back(TensorDesc{t.name, t.type, t.shape, data + t.off, t.nbytes});
  }
  apply_lut_layouts(g, path);
  return g;
}

int64_t meta_int(const Gguf& g, const std::string& key, const std::string& path, const int64_t* fallback) {
  auto it = g.meta.find(key);
  if (it == g.meta.end() || it->second.kind != MetaValue::INT) {
    if (fallback) return *fallback;
    throw Error(path + ": metadata '" + key + "' is missing or not an integer");
  }
  if (it->second.i < 0 || it->second.i > std::numeric_limits<int32_t>::max())
    throw Error(path + ": metadata '" + key + "' is out of range");
  return it->second.i;
}

double meta_float(const Gguf& g, const std::string& key, double fallback) {
  auto it = g.meta.find(key);
  if (it == g.meta.end()) return fallback;
  return it->second.kind == MetaValue::FLOAT ? it->second.f : double(it->second.i);
}

ModelConfig config_from_gguf(const Gguf& g, const std::string& path) {
  ModelConfig c;
  auto a = g.meta.find("general.architecture");
  if (a == g.meta.end() || a->second.kind != MetaValue::STRING) throw Error(path + ": metadata 'general.architecture' is missing");
  c.arch = a->second.s;
  const std::string p = c.arch + ".";
  c.n_layer = int(meta_int(g, p + "block_count", path, nullptr));
  c.d_model = int(meta_int(g, p + "embedding_length", path, nullptr));
  c.n_head = int(meta_int(g, p + "attention.head_count", path, nullptr));
  const int64_t nh = c.n_head;
  c.n_head_kv = int(meta_int(g, p + "attention.head_count_kv", path, &nh));
  if (c.n_head <= 0 || c.d_model <= 0) throw Error(path + ": model hyper-parameters must be positive");
  const int64_t hd = c.d_model / c.n_head;
  c.head_dim = int(meta_int(g, p + "attention.key_length", path, &hd));
  c.d_ff = int(meta_int(g, p + "feed_forward_length", path, nullptr));
  auto toks = g.meta.find("tokenizer.ggml.tokens");
  const int64_t nv = toks != g.meta.end() && toks->second.kind == MetaValue::ARRAY ? int64_t(toks->second.n) : -1;
  c.n_vocab = int(meta_int(g, p + "vocab_size", path, nv >= 0 ? &nv : nullptr));
  c.n_ctx_train = int(meta_int(g, p + "context_length", path, nullptr));
  c.norm_eps = float(meta_float(g, p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_base = float(meta_float(g, p + "rope.freq_base", 10000.0));
  auto sc = g.meta.find(p + "rope.scaling.type");
  if (sc != g.meta.end() && sc->second.kind == MetaValue::STRING && sc->second.s != "none") {
    if (sc->second.s != "linear") throw Error(path + ": rope scaling '" + sc->second.s + "' is not supported");
    const double f = meta_float(g, p + "rope.scaling.factor", 0.0);
    if (!(f > 0)) throw Error(path + ": rope.scaling.factor must be positive");
    c.rope_freq_scale = float(1.0 / f);
  }
  const int64_t hd2 = c.head_dim;
  c.rope_dim = int(meta_int(g, p + "rope.dimension_count", path, &hd2));
  // Family rules; python/lutllm/arch.py applies the same ones (tests/test_c_api.py checks that both
  // loaders give the same logits on small models of every family).
  c.rope_mode = c.arch == "qwen2" || c.arch == "gemma3" ? RopeMode::NEOX : RopeMode::NORM;
  if (c.arch == "gemma3") {
    c.ffn_act = FfnAct::GELU_TANH;
    c.embd_scale = std::sqrt(float(c.d_model));
    if (c.n_layer == 62) c.attn_scale = 1.f / std::sqrt(float(c.d_model) / float(c.n_head));
    const int64_t window = meta_int(g, p + "attention.sliding_window", path, nullptr);
    const int64_t six = 6;
    auto pat = g.meta.find(p + "attention.sliding_window_pattern");
    if (pat != g.meta.end() && pat->second.kind != MetaValue::INT)
      throw Error(path + ": a per-layer '" + p + "attention.sliding_window_pattern' array is not supported by the C API");
    const int64_t period = meta_int(g, p + "attention.sliding_window_pattern", path, &six);
    if (window <= 0 || period <= 0) throw Error(path + ": gemma3 sliding window settings must be positive");
    for (int i = 0; i < c.n_layer; ++i) {
      const bool local = i % period < period - 1;
      c.layer_window.push_back(local ? int(window) : 0);
      c.layer_rope_base.push_back(local ? 10000.f : c.rope_base);
      c.layer_rope_freq_scale.push_back(local ? 1.f : c.rope_freq_scale);
    }
  } else if (c.arch == "bitnet") {
    auto act = g.meta.find(p + "hidden_act");
    const std::string a = act != g.meta.end() && act->second.kind == MetaValue::STRING ? act->second.s : "silu";
    if (a == "relu2" || a == "relu_squared") c.ffn_act = FfnAct::RELU_SQR;
    else if (a == "gelu") c.ffn_act = FfnAct::GELU_TANH;
    else if (a != "silu") throw Error(path + ": bitnet hidden_act '" + a + "' is not supported");
  }
  return c;
}

// splitmix64: small, seedable, good enough for sampling draws
uint64_t next_u64(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <class F>
int32_t guarded(F&& f) {
  try {
    g_error.clear();
    return f();
  } catch (const Cancelled& e) {
    return fail(LUTLLM_ERR_CANCELLED, e.what());
  } catch (const Error& e) {
    const std::string w = e.what();
    return fail(w.find("exceed the context") != std::string::npos ? LUTLLM_ERR_CONTEXT : LUTLLM_ERR_ARGUMENT, w);
  } catch (const std::bad_alloc&) {
    return fail(LUTLLM_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(LUTLLM_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail(LUTLLM_ERR_INTERNAL, "unknown failure");
  }
}

}  // namespace

extern "C" {

lutllm_model* lutllm_load(const char* path, int32_t n_ctx, int32_t n_threads, const char** err) {
  lutllm_model* out = nullptr;
  const int32_t rc = guarded([&]() -> int32_t {
    if (!path) return fail(LUTLLM_ERR_ARGUMENT, "path is NULL");
    if (n_ctx < 0 || n_ctx > kMaxCtx)
      return fail(LUTLLM_ERR_ARGUMENT, "n_ctx " + std::to_string(n_ctx) + " is outside 0.." + std::to_string(kMaxCtx));
    if (n_threads < 0 || n_threads > 1024) return fail(LUTLLM_ERR_ARGUMENT, "n_threads must be in 0..1024");
    try {
      const Gguf g = read_gguf(path);
      const ModelConfig cfg = config_from_gguf(g, path);
      auto m = std::make_unique<lutllm_model>();
      m->model = std::make_shared<Model>(path, cfg, g.tensors, n_threads);
      const int ctx = n_ctx > 0 ? n_ctx : std::min(cfg.n_ctx_train > 0 ? cfg.n_ctx_train : 4096, 4096);
      m->ctx = std::make_unique<Context>(m->model, ctx, 512);
      auto eos = g.meta.find("tokenizer.ggml.eos_token_id");
      if (eos != g.meta.end() && eos->second.kind == MetaValue::INT && eos->second.i >= 0 && eos->second.i < cfg.n_vocab)
        m->eos = int32_t(eos->second.i);
      out = m.release();
      return LUTLLM_OK;
    } catch (const Error& e) {
      return fail(LUTLLM_ERR_MODEL, e.what());
    }
  });
  if (rc != LUTLLM_OK && err) *err = g_error.c_str();
  return out;
}

void lutllm_free(lutllm_model* model) { delete model; }

int32_t lutllm_n_vocab(const lutllm_model* model) {
  if (!model) return fail(LUTLLM_ERR_ARGUMENT, "model is NULL");
  return model->ctx->n_vocab();
}

int32_t lutllm_n_ctx(const lutllm_model* model) {
  if (!model) return fail(LUTLLM_ERR_ARGUMENT, "model is NULL");
  return model->ctx->n_ctx();
}

int32_t lutllm_token_eos(const lutllm_model* model) {
  if (!model) return fail(LUTLLM_ERR_ARGUMENT, "model is NULL");
  return model->eos;
}

int32_t lutllm_eval(lutllm_model* model, const int32_t* tokens, int32_t n, int32_t pos, float* logits) {
  return guarded([&]() -> int32_t {
    if (!model || !tokens) return fail(LUTLLM_ERR_ARGUMENT, "model and tokens must not be NULL");
    if (n <= 0) return fail(LUTLLM_ERR_ARGUMENT, "n must be positive");
    if (pos < 0 || int64_t(pos) + n > model->ctx->n_ctx())
      return fail(LUTLLM_ERR_CONTEXT, "positions " + std::to_string(pos) + ".." + std::to_string(int64_t(pos) + n - 1) +
                                          " exceed the context size " + std::to_string(model->ctx->n_ctx()));
    std::vector<float> scratch;
    float* out = logits;
    if (!out) {
      scratch.resize(size_t(model->ctx->n_vocab()));
      out = scratch.data();
    }
    model->ctx->eval(tokens, n, pos, false, out);
    return LUTLLM_OK;
  });
}

int32_t lutllm_sample(const float* logits, int32_t n_vocab, float temperature, uint64_t* rng_state, int32_t* token) {
  return guarded([&]() -> int32_t {
    if (!logits || !token) return fail(LUTLLM_ERR_ARGUMENT, "logits and token must not be NULL");
    if (n_vocab <= 0) return fail(LUTLLM_ERR_ARGUMENT, "n_vocab must be positive");
    if (std::isnan(temperature)) return fail(LUTLLM_ERR_ARGUMENT, "temperature is NaN");
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    if (std::isnan(logits[best]) || logits[best] == -std::numeric_limits<float>::infinity())
      return fail(LUTLLM_ERR_ARGUMENT, "logits hold no finite maximum");
    if (temperature <= 0) {
      *token = best;
      return LUTLLM_OK;
    }
    if (!rng_state) return fail(LUTLLM_ERR_ARGUMENT, "rng_state must not be NULL when temperature > 0");
    std::vector<double> w(static_cast<size_t>(n_vocab));
    double total = 0;
    const double m = logits[best];
    for (int32_t i = 0; i < n_vocab; ++i) {
      const double x = std::isnan(logits[i]) ? 0.0 : std::exp((double(logits[i]) - m) / double(temperature));
      w[size_t(i)] = x;
      total += x;
    }
    const double u = double(next_u64(rng_state) >> 11) * (1.0 / 9007199254740992.0) * total;
    double acc = 0;
    for (int32_t i = 0; i < n_vocab; ++i) {
      acc += w[size_t(i)];
      if (acc > u && w[size_t(i)] > 0) {
        *token = i;
        return LUTLLM_OK;
      }
    }
    *token = best;
    return LUTLLM_OK;
  });
}

int32_t lutllm_generate(lutllm_model* model, const int32_t* prompt, int32_t n_prompt, int32_t max_tokens,
                        float temperature, uint64_t seed, int32_t* out, int32_t* n_out) {
  if (n_out) *n_out = 0;
  return guarded([&]() -> int32_t {
    if (!model || !prompt || !n_out || (!out && max_tokens > 0))
      return fail(LUTLLM_ERR_ARGUMENT, "model, prompt, out and n_out must not be NULL");
    if (n_prompt <= 0 || max_tokens < 0) return fail(LUTLLM_ERR_ARGUMENT, "n_prompt must be positive and max_tokens >= 0");
    Context& ctx = *model->ctx;
    if (n_prompt > ctx.n_ctx())
      return fail(LUTLLM_ERR_CONTEXT, "the prompt has " + std::to_string(n_prompt) + " tokens, more than the context size " +
                                          std::to_string(ctx.n_ctx()));
    std::vector<float> logits(size_t(ctx.n_vocab()));
    ctx.eval(prompt, n_prompt, 0, false, logits.data());
    int64_t pos = n_prompt;
    uint64_t rng = seed;
    for (int32_t i = 0; i < max_tokens; ++i) {
      int32_t tok = 0;
      const int32_t rc = lutllm_sample(logits.data(), ctx.n_vocab(), temperature, &rng, &tok);
      if (rc != LUTLLM_OK) return rc;
      if (tok == model->eos) break;
      out[i] = tok;
      *n_out = i + 1;
      if (pos >= ctx.n_ctx() || i + 1 == max_tokens) break;
      ctx.eval(&tok, 1, pos, false, logits.data());
      ++pos;
    }
    return LUTLLM_OK;
  });
}

void lutllm_cancel(lutllm_model* model) {
  if (model) model->ctx->request_cancel();
}

const char* lutllm_last_error(void) { return g_error.c_str(); }

}  // extern "C"
