// Batched reads of many (offset, length) ranges of one file into caller buffers, for weights that
// stream from storage. Backends: io_uring + O_DIRECT, a pread thread pool (O_DIRECT when the file
// system allows), buffered pread + POSIX_FADV_DONTNEED. It moves bytes; it knows nothing of models.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lutllm {

enum class IoBackend : int { AUTO = 0, URING = 1, POOL = 2, BUFFERED = 3 };
const char* io_backend_name(IoBackend b);                 // "auto", "uring", "pool", "buffered"
IoBackend io_backend_from_name(const std::string& name);  // throws Error on an unknown name

// One range to read: file bytes [offset, offset + length) go to dst[0 .. length).
// Any offset, length and dst work; ranges that are 4096-aligned in all three are read straight
// into dst with O_DIRECT, the others through an aligned bounce buffer (widened, then copied).
struct ReadRange {
  uint64_t offset;
  uint64_t length;
  void* dst;
};

struct ReadBatch;  // one submitted group of ranges (opaque)
using ReadTicket = std::shared_ptr<ReadBatch>;

class FlashReader {
 public:
  static constexpr size_t kAlign = 4096;           // O_DIRECT alignment we lay files out for
  static constexpr size_t kPiece = size_t(1) << 20;  // ranges are split into reads of at most this

  // AUTO: the backend named by env LUTLLM_FLASH_IO (auto|uring|pool|buffered) if set, else the
  // first of uring, pool, buffered that works on this kernel and file system. A forced backend that
  // cannot work throws Error saying why. threads: pread workers (pool/buffered); depth: io_uring
  // queue depth.
  explicit FlashReader(const std::string& path, IoBackend want = IoBackend::AUTO, int threads = 4, int depth = 64);
  ~FlashReader();
  FlashReader(const FlashReader&) = delete;
  FlashReader& operator=(const FlashReader&) = delete;

  IoBackend backend() const;
  bool direct() const;  // reads bypass the page cache (O_DIRECT)
  uint64_t file_size() const;
  const std::string& path() const;
  // Why AUTO did not pick a better backend ("" when it got io_uring or one was forced).
  const std::string& fallback_reason() const;

  // Starts reading; the ranges' buffers must stay valid until wait() returns. Validates every range
  // against the file size first (Error naming file, offset, length). Thread-safe.
  ReadTicket submit(const ReadRange* ranges, size_t n);
  // Blocks until the batch is done; throws Error naming the file and the offset of the first failure.
  void wait(const ReadTicket& t);
  void read(const ReadRange* ranges, size_t n) { wait(submit(ranges, n)); }

  // Bytes issued to the file system so far, alignment widening included (what storage must deliver).
  uint64_t bytes_issued() const;

  // 4096-aligned allocation for read targets; release with aligned_free.
  static void* aligned_alloc_bytes(size_t bytes);
  static void aligned_free(void* p);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Owning 4096-aligned byte buffer (move-only).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) : p_(static_cast<uint8_t*>(FlashReader::aligned_alloc_bytes(bytes))), n_(bytes) {}
  ~AlignedBuffer() { FlashReader::aligned_free(p_); }
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) { FlashReader::aligned_free(p_); p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace lutllm
