// FlashReader: io_uring (raw syscalls, no liburing) or a pread thread pool, both with O_DIRECT where
// the file system allows it, and buffered pread + POSIX_FADV_DONTNEED as the last resort.
// Ranges are cut into pieces of at most kPiece bytes; misaligned pieces go through bounce buffers.
#include "flash_io.h"

#include <fcntl.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "error.h"

namespace lutllm {

const char* io_backend_name(IoBackend b) {
  switch (b) {
    case IoBackend::AUTO: return "auto";
    case IoBackend::URING: return "uring";
    case IoBackend::POOL: return "pool";
    case IoBackend::BUFFERED: return "buffered";
  }
  return "?";
}

IoBackend io_backend_from_name(const std::string& n) {
  if (n == "auto" || n.empty()) return IoBackend::AUTO;
  if (n == "uring" || n == "io_uring") return IoBackend::URING;
  if (n == "pool" || n == "pread") return IoBackend::POOL;
  if (n == "buffered") return IoBackend::BUFFERED;
  throw Error("unknown I/O backend '" + n + "' (expected auto, uring, pool or buffered)");
}

void* FlashReader::aligned_alloc_bytes(size_t bytes) {
  void* p = nullptr;
  const size_t n = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  if (posix_memalign(&p, kAlign, n) != 0 || !p) throw Error("out of memory allocating " + std::to_string(n) + " bytes");
  return p;
}
void FlashReader::aligned_free(void* p) { std::free(p); }

struct ReadBatch {
  std::mutex mu;
  std::condition_variable cv;
  size_t pending = 0;
  std::string error;  // first failure
};

namespace {

struct Piece {
  uint64_t off = 0;   // file offset of buf[0]
  size_t len = 0;     // bytes asked of the file system (aligned under O_DIRECT)
  size_t need = 0;    // bytes that must arrive (len, or less for a bounce read widened past EOF)
  size_t done = 0;
  uint8_t* buf = nullptr;       // read target (the caller's buffer, or a bounce buffer)
  bool bounce = false;
  uint8_t* copy_dst = nullptr;  // bounce: copy buf[skip, skip + copy_len) here
  size_t skip = 0, copy_len = 0;
  std::shared_ptr<ReadBatch> batch;
};


// Minimal io_uring: one submission and one completion ring, IORING_OP_READ only.
struct Ring {
  int fd = -1;
  void* sq_map = nullptr;
  size_t sq_map_len = 0;
  void* cq_map = nullptr;
  size_t cq_map_len = 0;
  io_uring_sqe* sqes = nullptr;
  size_t sqes_len = 0;
  unsigned *sq_head = nullptr, *sq_tail = nullptr, *sq_mask = nullptr, *sq_array = nullptr;
  unsigned *cq_head = nullptr, *cq_tail = nullptr, *cq_mask = nullptr;
  io_uring_cqe* cqes = nullptr;
  unsigned entries = 0;

  // Returns "" or why io_uring cannot be used.
  std::string setup(unsigned depth) {
    io_uring_params p;
    std::memset(&p, 0, sizeof p);
    const long r = syscall(__NR_io_uring_setup, depth, &p);
    if (r < 0) return std::string("io_uring_setup: ") + std::strerror(errno);
    fd = int(r);
    entries = p.sq_entries;
    sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sq_map_len = cq_map_len = std::max(sq_map_len, cq_map_len);
    sq_map = mmap(nullptr, sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sq_map == MAP_FAILED) { sq_map = nullptr; return std::string("io_uring mmap: ") + std::strerror(errno); }
    if (single) cq_map = sq_map;
    else {
      cq_map = mmap(nullptr, cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
      if (cq_map == MAP_FAILED) { cq_map = nullptr; return std::string("io_uring mmap: ") + std::strerror(errno); }
    }
    sqes_len = p.sq_entries * sizeof(io_uring_sqe);
    void* s = mmap(nullptr, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (s == MAP_FAILED) return std::string("io_uring mmap: ") + std::strerror(errno);
    sqes = static_cast<io_uring_sqe*>(s);
    auto* sq = static_cast<uint8_t*>(sq_map);
    auto* cq = static_cast<uint8_t*>(cq_map);
    sq_head = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    return "";
  }
  ~Ring() {
    if (sqes) munmap(sqes, sqes_len);
    if (cq_map && cq_map != sq_map) munmap(cq_map, cq_map_len);
    if (sq_map) munmap(sq_map, sq_map_len);
    if (fd >= 0) close(fd);
  }
  // Queues one read (caller checked there is room: in flight < entries).
  void queue_read(int file, void* buf, unsigned len, uint64_t off, uint64_t user) {
    const unsigned tail = *sq_tail;  // only this thread writes the tail
    const unsigned idx = tail & *sq_mask;
    io_uring_sqe* e = &sqes[idx];
    std::memset(e, 0, sizeof *e);
    e->opcode = IORING_OP_READ;
    e->fd = file;
    e->off = off;
    e->addr = reinterpret_cast<uint64_t>(buf);
    e->len = len;
    e->user_data = user;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
  }
  // Submits `n` queued entries and waits for at least `wait_n` completions. Returns 0 or -errno.
  int64_t enter(unsigned n, unsigned wait_n) {
    for (;;) {
      const long r = syscall(__NR_io_uring_enter, fd, n, wait_n, wait_n ? IORING_ENTER_GETEVENTS : 0u, nullptr, 0);
      if (r >= 0) {
        if (unsigned(r) >= n) return 0;
        n -= unsigned(r);
        continue;
      }
      if (errno == EINTR) { if (n == 0) return 0; continue; }
      if (errno == EAGAIN || errno == EBUSY) { std::this_thread::sleep_for(std::chrono::microseconds(50)); continue; }
      return -int64_t(errno);
    }
  }
  template <typename F>
  void reap(F&& on_cqe) {
    unsigned head = *cq_head;
    const unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
    while (head != tail) {
      const io_uring_cqe& c = cqes[head & *cq_mask];
      on_cqe(c.user_data, c.res);
      ++head;
    }
    __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
  }
};

}  // namespace

struct FlashReader::Impl {
  std::string path;
  int fd = -1;
  bool direct = false;
  IoBackend backend = IoBackend::POOL;
  uint64_t size = 0;
  std::string fallback;
  std::atomic<uint64_t> issued{0};

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Piece*> queue;
  bool stop = false;
  std::vector<std::thread> threads;
  std::unique_ptr<Ring> ring;

  ~Impl() {
    {
      std::lock_guard<std::mutex> g(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& t : threads) t.join();
    ring.reset();
    if (fd >= 0) close(fd);
  }

  std::string where(uint64_t off) const { return path + ": read at offset " + std::to_string(off); }

  // Finishes a piece: copy out of a bounce buffer, record an error, count down its batch.
  void finish(Piece* p, const std::string& err) {
    if (err.empty() && p->bounce) std::memcpy(p->copy_dst, p->buf + p->skip, p->copy_len);
    if (p->bounce) aligned_free(p->buf);
    std::shared_ptr<ReadBatch> b = std::move(p->batch);
    delete p;
    std::lock_guard<std::mutex> g(b->mu);
    if (!err.empty() && b->error.empty()) b->error = err;
    if (--b->pending == 0) b->cv.notify_all();
  }

  // Accounts for `got` bytes of a read (got <= 0: error or EOF). Returns true when the piece is
  // complete (finished, successfully or not); false when the rest must be read again.
  bool advance(Piece* p, int64_t got) {
    const uint64_t at = p->off + p->done;
    if (got < 0) {
      finish(p, where(at) + " (" + std::to_string(p->len - p->done) + " bytes) failed: " + std::strerror(int(-got)));
      return true;
    }
    if (got == 0) {
      if (p->done >= p->need) { finish(p, ""); return true; }
      finish(p, where(at) + ": unexpected end of file (file is shorter than when it was opened)");
      return true;
    }
    p->done += size_t(got);
    if (p->done >= p->need) { finish(p, ""); return true; }
    if (direct && p->done % kAlign) {
      finish(p, where(at) + ": short read of " + std::to_string(got) + " bytes, file is shorter than expected");
      return true;
    }
    return false;
  }

  void pread_piece(Piece* p) {
    for (;;) {
      const ssize_t r = ::pread(fd, p->buf + p->done, p->len - p->done, off_t(p->off + p->done));
      if (r < 0 && errno == EINTR) continue;
      const uint64_t off = p->off, len = p->len;
      if (advance(p, r < 0 ? -int64_t(errno) : int64_t(r))) {
        // the page cache must not keep what we copied out (buffered fallback only)
        if (!direct) posix_fadvise(fd, off_t(off), off_t(len), POSIX_FADV_DONTNEED);
        return;
      }
    }
  }

  void pool_loop() {
    for (;;) {
      Piece* p;
      {
        std::unique_lock<std::mutex> g(mu);
        cv.wait(g, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;  // stop, and nothing left to drain
        p = queue.front();
        queue.pop_front();
      }
      pread_piece(p);
    }
  }

  void uring_loop() {
    Ring& R = *ring;
    unsigned in_flight = 0;
    std::deque<Piece*> local;
    for (;;) {
      {
        std::unique_lock<std::mutex> g(mu);
        if (in_flight == 0 && local.empty()) cv.wait(g, [&] { return stop || !queue.empty(); });
        while (!queue.empty()) { local.push_back(queue.front()); queue.pop_front(); }
        if (stop && in_flight == 0 && local.empty()) return;
      }
      unsigned queued = 0;
      while (!local.empty() && in_flight + queued < R.entries) {
        Piece* p = local.front();
        local.pop_front();
        R.queue_read(fd, p->buf + p->done, unsigned(p->len - p->done), p->off + p->done, reinterpret_cast<uint64_t>(p));
        ++queued;
      }
      in_flight += queued;
      const int64_t e = R.enter(queued, in_flight ? 1 : 0);
      if (e < 0) {  // the ring itself failed (not a read): serve what is not yet queued with pread
        for (Piece* p : local) pread_piece(p);
        local.clear();
      }
      R.reap([&](uint64_t user, int32_t res) {
        --in_flight;
        Piece* p = reinterpret_cast<Piece*>(user);
        if (res == -EINTR || res == -EAGAIN) { local.push_front(p); return; }
        if (!advance(p, res)) local.push_front(p);
      });
    }
  }

  void start(int n_threads) {
    if (backend == IoBackend::URING) threads.emplace_back([this] { uring_loop(); });
    else
      for (int i = 0; i < std::max(1, n_threads); ++i) threads.emplace_back([this] { pool_loop(); });
  }

  void enqueue(std::vector<Piece*>& ps) {
    {
      std::lock_guard<std::mutex> g(mu);
      for (Piece* p : ps) queue.push_back(p);
    }
    cv.notify_all();
  }
};

namespace {

int open_file(const std::string& path, bool direct, int* err) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  *err = fd < 0 ? errno : 0;
  return fd;
}

}  // namespace

FlashReader::FlashReader(const std::string& path, IoBackend want, int threads, int depth) : impl_(new Impl) {
  Impl& I = *impl_;
  I.path = path;
  if (want == IoBackend::AUTO) {
    const char* env = std::getenv("LUTLLM_FLASH_IO");
    if (env && *env) want = io_backend_from_name(env);
  }
  int err = 0;
  I.fd = open_file(path, false, &err);
  if (I.fd < 0) throw Error(path + ": cannot open: " + std::strerror(err));
  struct stat st;
  if (fstat(I.fd, &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  I.size = uint64_t(st.st_size);

  // O_DIRECT: open and read the first block; some file systems refuse one or the other.
  std::string direct_why;
  if (want != IoBackend::BUFFERED) {
    const int dfd = open_file(path, true, &err);
    if (dfd < 0) direct_why = std::string("O_DIRECT open: ") + std::strerror(err);
    else {
      AlignedBuffer probe(kAlign);
      const ssize_t r = ::pread(dfd, probe.data(), kAlign, 0);
      if (r < 0) {
        direct_why = std::string("O_DIRECT read: ") + std::strerror(errno);
        close(dfd);
      } else {
        close(I.fd);
        I.fd = dfd;
        I.direct = true;
      }
    }
    if (!I.direct && want != IoBackend::AUTO)
      throw Error(path + ": I/O backend '" + io_backend_name(want) + "' needs O_DIRECT, which failed: " + direct_why);
  }

  if (want == IoBackend::URING || (want == IoBackend::AUTO && I.direct)) {
    auto ring = std::make_unique<Ring>();
    const std::string why = ring->setup(unsigned(std::max(1, std::min(depth, 4096))));
    if (why.empty()) {
      I.ring = std::move(ring);
      I.backend = IoBackend::URING;
    } else if (want == IoBackend::URING) {
      throw Error(path + ": I/O backend 'uring' is not available: " + why);
    } else {
      I.fallback = why;
    }
  }
  if (!I.ring) {
    if (want == IoBackend::BUFFERED || !I.direct) {
      I.backend = IoBackend::BUFFERED;
      if (want == IoBackend::AUTO) I.fallback = direct_why;
      posix_fadvise(I.fd, 0, 0, POSIX_FADV_RANDOM);
    } else {
      I.backend = IoBackend::POOL;
    }
  }
  I.start(threads);
}

FlashReader::~FlashReader() = default;

IoBackend FlashReader::backend() const { return impl_->backend; }
bool FlashReader::direct() const { return impl_->direct; }
uint64_t FlashReader::file_size() const { return impl_->size; }
const std::string& FlashReader::path() const { return impl_->path; }
const std::string& FlashReader::fallback_reason() const { return impl_->fallback; }
uint64_t FlashReader::bytes_issued() const { return impl_->issued.load(); }

ReadTicket FlashReader::submit(const ReadRange* ranges, size_t n) {
  Impl& I = *impl_;
  for (size_t i = 0; i < n; ++i) {
    const ReadRange& r = ranges[i];
    if (r.length && !r.dst) throw Error(I.path + ": read at offset " + std::to_string(r.offset) + ": no destination buffer");
    if (r.offset > I.size || r.length > I.size - r.offset)
      throw Error(I.path + ": read of " + std::to_string(r.length) + " bytes at offset " + std::to_string(r.offset) +
                  " extends past the end of the file (size " + std::to_string(I.size) + ")");
  }
  auto batch = std::make_shared<ReadBatch>();
  std::vector<Piece*> pieces;
  uint64_t issued = 0;
  try {
    for (size_t i = 0; i < n; ++i) {
      const ReadRange& r = ranges[i];
      auto* dst = static_cast<uint8_t*>(r.dst);
      for (uint64_t at = 0; at < r.length;) {
        const uint64_t off = r.offset + at;
        uint64_t len = std::min<uint64_t>(kPiece, r.length - at);
        auto* p = new Piece;
        pieces.push_back(p);
        p->batch = batch;
        const bool aligned = off % kAlign == 0 && len % kAlign == 0 && reinterpret_cast<uintptr_t>(dst + at) % kAlign == 0;
        if (!I.direct || aligned) {
          p->off = off;
          p->len = p->need = size_t(len);
          p->buf = dst + at;
        } else {
          // widen to alignment, read into a bounce buffer, copy the wanted part out
          const uint64_t a0 = off / kAlign * kAlign;
          const uint64_t a1 = (off + len + kAlign - 1) / kAlign * kAlign;
          p->bounce = true;
          p->off = a0;
          p->len = size_t(a1 - a0);
          p->skip = size_t(off - a0);
          p->copy_len = size_t(len);
          p->need = p->skip + p->copy_len;
          p->copy_dst = dst + at;
          p->buf = static_cast<uint8_t*>(aligned_alloc_bytes(p->len));
        }
        issued += p->len;
        at += len;
      }
    }
  } catch (...) {
    for (Piece* p : pieces) {
      if (p->bounce) aligned_free(p->buf);
      delete p;
    }
    throw;
  }
  batch->pending = pieces.size();
  I.issued += issued;
  if (!pieces.empty()) I.enqueue(pieces);
  return batch;
}

void FlashReader::wait(const ReadTicket& t) {
  if (!t) return;
  std::unique_lock<std::mutex> g(t->mu);
  t->cv.wait(g, [&] { return t->pending == 0; });
  if (!t->error.empty()) throw Error(t->error);
}

}  // namespace lutllm
