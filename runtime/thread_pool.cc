// ThreadPool implementation: generation counter to wake workers, one atomic (loop number, next task)
// word to claim tasks, a done counter to end a loop; spin-then-sleep workers.
#include "thread_pool.h"

#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace lutllm {

namespace {
inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
constexpr int kSpinIters = 20000;     // ~ tens of microseconds before an idle worker sleeps
constexpr int kWaitSpinIters = 2000;  // the caller's spin before it starts yielding
constexpr uint32_t kClosed = 0xFFFFFFFFu;  // task index of a loop being set up
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  for (int t = 1; t < n_threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks(uint32_t gen, int thread) {
  uint64_t v = claim_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t idx = uint32_t(v & 0xFFFFFFFFu);
    if (uint32_t(v >> 32) != gen || idx == kClosed) return;
    // Seen open for loop `gen`, so n and fn of that loop are visible. If they were already those of a
    // later loop, the caller had moved the loop number on before writing them, and the CAS fails.
    const int64_t n = n_tasks_.load(std::memory_order_acquire);
    const std::function<void(int64_t, int)>* fn = fn_.load(std::memory_order_acquire);
    if (int64_t(idx) >= n) return;
    if (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    (*fn)(int64_t(idx), thread);
    done_tasks_.fetch_add(1, std::memory_order_acq_rel);
    v = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::parallel_for(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1 || n_tasks >= int64_t(kClosed)) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(i, 0);
    return;
  }
  const uint32_t gen = ++loop_;
  // Old-loop claims fail from here on (loop number changed before the parameters do).
  claim_.store(uint64_t(gen) << 32 | kClosed, std::memory_order_release);
  fn_.store(&fn, std::memory_order_release);
  n_tasks_.store(n_tasks, std::memory_order_release);
  done_tasks_.store(0, std::memory_order_relaxed);
  claim_.store(uint64_t(gen) << 32, std::memory_order_release);  // open the loop
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  run_tasks(gen, 0);
  // Only tasks a worker claimed and is still running are waited for. If that worker was
  // descheduled (more runnable threads than cores), spin briefly, then yield to let it run.
  for (int spins = 0; done_tasks_.load(std::memory_order_acquire) != n_tasks; ++spins) {
    if (spins < kWaitSpinIters) cpu_relax();
    else std::this_thread::yield();
  }
}

void ThreadPool::worker_loop(int thread) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIters) {
      cpu_relax();
      ++spins;
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    run_tasks(uint32_t(claim_.load(std::memory_order_acquire) >> 32), thread);
  }
}

int physical_core_count() {
  // Count distinct (physical id, core id) pairs; fall back to logical CPUs.
  std::ifstream f("/proc/cpuinfo");
  std::set<std::pair<std::string, std::string>> cores;
  std::string line, phys = "0";
  while (std::getline(f, line)) {
    if (line.rfind("physical id", 0) == 0) phys = line.substr(line.find(':') + 1);
    if (line.rfind("core id", 0) == 0) cores.insert({phys, line.substr(line.find(':') + 1)});
  }
  const int logical = int(std::thread::hardware_concurrency());
  if (!cores.empty() && int(cores.size()) <= logical) return int(cores.size());
  return logical > 0 ? logical : 1;
}

}  // namespace lutllm
