// A small persistent thread pool.  Workers spin briefly after each job before
// sleeping, because decode issues back-to-back jobs of ~100 µs each and a
// futex wake-up per job would cost a noticeable share of that.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ll {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    // Runs fn(ith, nth) on every thread (the caller is thread 0) and returns
    // when all have finished.  Not reentrant: one job at a time.
    void run(const std::function<void(int ith, int nth)>& fn);

private:
    void worker(int ith);

    int n_threads_;
    std::vector<std::thread> threads_;
    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::mutex run_mutex_;
};

// Default thread count: physical cores (logical CPUs when that cannot be told).
int default_thread_count();
// The process-wide pool used by the kernels (created lazily).  Callers hold the
// shared_ptr for the duration of a job, so resizing never frees a busy pool.
std::shared_ptr<ThreadPool> global_pool();
// Replaces the global pool with one of n threads (n <= 0: default).
void set_global_threads(int n);

}  // namespace ll
