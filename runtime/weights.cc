// WeightStore / MappedFile: mmap the GGUF read-only and check every tensor lies inside it.
#include "weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.h"

namespace lutllm {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(e));
  }
  size_ = size_t(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw Error(path + ": file is empty");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw Error(path + ": mmap failed: " + std::strerror(e));
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

WeightStore::WeightStore(const std::string& path, const std::vector<TensorDesc>& tensors)
    : file_(std::make_shared<MappedFile>(path)) {
  for (const TensorDesc& d : tensors) {
    const std::string where = path + ": tensor '" + d.name + "'";
    if (d.lut.kind != 0) {
      add_packed(d, where);
      continue;
    }
    if (!type_known(d.type)) throw Error(where + " has unknown type id " + std::to_string(d.type));
    const TypeTraits& tt = type_traits(d.type);
    if (d.shape.empty() || d.shape.size() > 4) throw Error(where + " has " + std::to_string(d.shape.size()) + " dims");
    WeightTensor t;
    t.name = d.name;
    t.type = GgmlType(d.type);
    t.n_dims = int(d.shape.size());
    uint64_t n = 1;
    for (size_t i = 0; i < d.shape.size(); ++i) {
      if (d.shape[i] <= 0 || d.shape[i] > (int64_t(1) << 40)) throw Error(where + " has an invalid dimension");
      t.ne[i] = d.shape[i];
      n *= uint64_t(d.shape[i]);
      if (n > (uint64_t(1) << 48)) throw Error(where + " is implausibly large");
    }
    if (t.ne[0] % tt.block_elems != 0)
      throw Error(where + ": row length " + std::to_string(t.ne[0]) + " is not a multiple of the " + tt.name +
                  " block size " + std::to_string(tt.block_elems));
    t.row_bytes = size_t(t.ne[0] / tt.block_elems) * size_t(tt.block_bytes);
    const uint64_t expect = uint64_t(t.row_bytes) * uint64_t(t.rows());
    if (d.nbytes != expect)
      throw Error(where + ": " + std::to_string(d.nbytes) + " bytes given, " + std::to_string(expect) + " expected for " +
                  tt.name);
    if (d.offset > file_->size() || expect > file_->size() - d.offset)
      throw Error(where + ": data [offset " + std::to_string(d.offset) + ", " + std::to_string(expect) +
                  " bytes] extends past end of file (size " + std::to_string(file_->size()) + ")");
    t.data = file_->data() + d.offset;
    t.nbytes = size_t(expect);
    if (!tensors_.emplace(d.name, t).second) throw Error(where + " appears twice");
  }
}

// A packed LUT tensor: the layout must match its logical shape exactly and lie inside the file.
void WeightStore::add_packed(const TensorDesc& d, const std::string& where) {
  if (d.type != uint32_t(GgmlType(24)))  // I8: packed bytes are stored as a byte tensor
    throw Error(where + ": packed LUT data must be stored as I8 bytes, the file says type id " + std::to_string(d.type));
  if (d.shape.size() != 2) throw Error(where + ": a packed LUT tensor must be 2-D (k, rows)");
  const int64_t k = d.shape[0], rows = d.shape[1];
  const std::string bad = lut_check_format(d.lut, rows, k);
  if (!bad.empty()) throw Error(where + ": invalid packed LUT layout for shape [" + std::to_string(k) + ", " +
                                std::to_string(rows) + "]: " + bad);
  if (k > (int64_t(1) << 32) || rows > (int64_t(1) << 32)) throw Error(where + " is implausibly large");
  const uint64_t expect = lut_packed_bytes(d.lut, rows, k);
  if (d.nbytes != expect)
    throw Error(where + ": " + std::to_string(d.nbytes) + " bytes given, " + std::to_string(expect) +
                " expected for LUT " + lut_kind_name(d.lut.kind) + " group " + std::to_string(d.lut.group) + " of " +
                std::to_string(rows) + " x " + std::to_string(k));
  if (d.offset > file_->size() || expect > file_->size() - d.offset)
    throw Error(where + ": data [offset " + std::to_string(d.offset) + ", " + std::to_string(expect) +
                " bytes] extends past end of file (size " + std::to_string(file_->size()) + ")");
  WeightTensor t;
  t.name = d.name;
  t.type = GgmlType(d.type);
  t.n_dims = 2;
  t.ne[0] = k;
  t.ne[1] = rows;
  t.data = file_->data() + d.offset;
  t.nbytes = size_t(expect);
  t.row_bytes = 0;
  t.lut = d.lut;
  if (!tensors_.emplace(d.name, t).second) throw Error(where + " appears twice");
}

const WeightTensor* WeightStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const WeightTensor& WeightStore::get(const std::string& name) const {
  const WeightTensor* t = find(name);
  if (!t) throw Error(file_->path() + ": required tensor '" + name + "' is missing");
  return *t;
}

}  // namespace lutllm
