// The weight store: owns the read-only mmap of a GGUF file and hands out typed views of its tensors.
// It validates what it is given (offsets, sizes, types) but does not parse GGUF; python/lutllm does that.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lutllm/ggml_types.h"
#include "lutllm/lut.h"

namespace lutllm {

// One tensor inside the mapped file. ne[0] is the contiguous (row) dimension, as in GGUF.
struct WeightTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};
  const uint8_t* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
  size_t row_bytes = 0;           // bytes of one ne[0]-long row (0 for a packed LUT tensor)
  // Packed LUT tensor (written by `lutllm quantize`): lut.kind != 0, data holds the lut.h layout,
  // ne = the LOGICAL shape {k, rows} and type = the stored byte type (I8). Only Linear reads it.
  LutFormat lut{0, 0, 0, 0};
  bool packed() const { return lut.kind != 0; }
  int64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  int64_t cols() const { return ne[0]; }
};

// Description of a tensor as read from the GGUF header by the Python loader.
struct TensorDesc {
  std::string name;
  uint32_t type;
  std::vector<int64_t> shape;  // ne0 first
  uint64_t offset;             // absolute byte offset in the file
  uint64_t nbytes;
  LutFormat lut{0, 0, 0, 0};   // kind != 0: packed LUT tensor, shape = logical {k, rows}
};

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error on failure
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class WeightStore {
 public:
  WeightStore(const std::string& path, const std::vector<TensorDesc>& tensors);
  const WeightTensor* find(const std::string& name) const;  // nullptr if absent
  const WeightTensor& get(const std::string& name) const;   // throws Error naming the tensor
  const MappedFile& file() const { return *file_; }
  const std::map<std::string, WeightTensor>& all() const { return tensors_; }

 private:
  void add_packed(const TensorDesc& d, const std::string& where);
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, WeightTensor> tensors_;
};

}  // namespace lutllm
