#include "threadpool.h"

#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LL_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define LL_PAUSE() __asm__ __volatile__("yield")
#else
#define LL_PAUSE() ((void)0)
#endif

#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace ll {

namespace {
// How long an idle worker keeps polling before it sleeps.
constexpr auto SPIN_TIME = std::chrono::microseconds(2000);
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    job_ = &fn;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(0, n_threads_);
    // Workers usually finish within microseconds of the caller; if one was
    // descheduled (a busy machine), yield the core rather than spin against it.
    for (int polls = 0; pending_.load(std::memory_order_acquire) != 0; polls++) {
        if (polls < 4096) LL_PAUSE();
        else std::this_thread::yield();
    }
    job_ = nullptr;
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        // Poll for the next job for SPIN_TIME, then block on the condition variable.
        auto spin_until = std::chrono::steady_clock::now() + SPIN_TIME;
        uint64_t g;
        int polls = 0;
        while ((g = generation_.load(std::memory_order_acquire)) == seen) {
            LL_PAUSE();
            if (++polls % 4096 == 0) std::this_thread::yield();
            if (polls % 256 == 0 && std::chrono::steady_clock::now() > spin_until) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
            }
        }
        seen = g;
        if (stop_.load()) return;
        (*job_)(ith, n_threads_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

int default_thread_count() {
#if defined(__linux__)
    // Count distinct (package, core) pairs: SMT siblings share a core and add
    // little to a memory-bound kernel.
    std::set<std::pair<std::string, std::string>> cores;
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line, phys = "0";
    while (std::getline(cpuinfo, line)) {
        auto value = [&] { auto p = line.find(':'); return p == std::string::npos ? std::string() : line.substr(p + 1); };
        if (line.rfind("physical id", 0) == 0) phys = value();
        if (line.rfind("core id", 0) == 0) cores.insert({phys, value()});
    }
    if (!cores.empty()) return (int)cores.size();
#elif defined(__APPLE__)
    // Performance cores only: efficiency cores slow down a row split evenly.
    int n = 0;
    size_t len = sizeof(n);
    if (sysctlbyname("hw.perflevel0.physicalcpu", &n, &len, nullptr, 0) == 0 && n > 0) return n;
#endif
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? (int)hc : 1;
}

namespace {
std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;
}  // namespace

std::shared_ptr<ThreadPool> global_pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool) g_pool = std::make_shared<ThreadPool>(default_thread_count());
    return g_pool;
}

void set_global_threads(int n) {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_pool = std::make_shared<ThreadPool>(n > 0 ? n : default_thread_count());
}

}  // namespace ll
