// A fixed pool of worker threads for data-parallel loops inside one forward pass.
// The calling thread takes part; workers spin briefly between loops, then sleep. Not a task queue.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lutllm {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads >= 1 counts the calling thread
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  // Runs fn(task, thread) for every task in [0, n_tasks); returns when all are done.
  // `thread` is in [0, size()) and identifies per-thread scratch.
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void worker_loop(int thread);
  void run_tasks(int thread);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<bool> stop_{false};
  int64_t n_tasks_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
};

// Physical cores of this machine (falls back to logical CPUs), used as the default thread count.
int physical_core_count();

}  // namespace lutllm
