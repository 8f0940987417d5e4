// Stress check of ThreadPool::parallel_for (built and run by tests/test_thread_pool.py): many short
// loops of varying size on more threads than cores; every task of every loop must run exactly once,
// before parallel_for returns, and no two tasks may hold the same thread index at the same time.
//   build: g++ -std=c++17 -O2 -pthread -Iruntime tests/cpp/pool_stress.cc runtime/thread_pool.cc
//   run:   ./a.out THREADS LOOPS   (exit status 0 and "ok" on success)
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "thread_pool.h"

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 4;
  const int loops = argc > 2 ? std::atoi(argv[2]) : 20000;
  lutllm::ThreadPool pool(threads);
  std::vector<std::atomic<int>> hits(64), busy(size_t(pool.size()));
  std::atomic<long> errors{0};
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  for (int l = 0; l < loops; ++l) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    const int64_t n = 2 + int64_t(rng % 40);
    const int work = int(rng >> 40) % 2000;  // some loops are long enough for a worker to join
    for (int64_t i = 0; i < n; ++i) hits[size_t(i)].store(0);
    pool.parallel_for(n, [&](int64_t task, int thread) {
      if (thread < 0 || thread >= pool.size() || busy[size_t(thread)].exchange(1) != 0) errors.fetch_add(1);
      volatile int sink = 0;
      for (int w = 0; w < work; ++w) sink = sink + w;
      if (task < 0 || task >= n) errors.fetch_add(1);
      else hits[size_t(task)].fetch_add(1);
      busy[size_t(thread)].store(0);
    });
    for (int64_t i = 0; i < n; ++i)
      if (hits[size_t(i)].load() != 1) {
        std::printf("loop %d: task %lld ran %d times\n", l, (long long)i, hits[size_t(i)].load());
        return 1;
      }
    if (errors.load()) {
      std::printf("loop %d: bad thread index, shared thread index or task out of range\n", l);
      return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
