// A fixed pool of worker threads for data-parallel loops inside one forward pass.
// The calling thread takes part; workers spin briefly between loops, then sleep. Not a task queue.
// A loop ends when all its tasks are done, not when every worker has checked in: on a machine with
// more runnable threads than cores, a worker that was not scheduled during the loop costs nothing.
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
  void run_tasks(uint32_t gen, int thread);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};  // wakes workers; bumped once per loop
  // (loop number << 32) | next task index: a task is claimed by a CAS that also checks the loop
  // number, so a worker that wakes late never runs a task of a later loop with stale parameters.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_tasks_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> n_tasks_{0};
  std::atomic<const std::function<void(int64_t, int)>*> fn_{nullptr};
  uint32_t loop_ = 0;  // caller side: number of the current loop
};

// Physical cores of this machine (falls back to logical CPUs), used as the default thread count.
int physical_core_count();

}  // namespace lutllm
