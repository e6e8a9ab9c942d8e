// A small persistent thread pool for splitting a batch into row blocks. Torch-free.
//
// run(n, fn) calls fn(i) for i in [0, n), the caller working too. Workers spin briefly after a
// job (a few microseconds: back-to-back calls wake them cheaply), then sleep, so that they
// never hold a core that torch's own threads need. An
// exception thrown by fn in any thread is rethrown in the caller once every block has stopped. Jobs never nest or queue: a second
// caller that finds the pool busy (another Python thread stepping concurrently) simply runs its
// blocks itself, so concurrent callers are always correct. Results must not depend on which
// thread runs a block (every kernel here writes disjoint rows and draws by row counter).
#pragma once
#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rf {

class ThreadPool {
public:
    static ThreadPool& get() {
        static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may outlive exit handlers
        return *pool;
    }

    // Total threads used by run(), caller included (>= 1). The caller bounds n (bindings.cpp:
    // max_threads()); if the system refuses a thread anyway, the count stays at the workers that
    // exist and the std::system_error propagates (the pool is never left claiming absent ones).
    void set_threads(int n) {
        if (n < 1) n = 1;
        std::lock_guard<std::mutex> job(job_mu_);
        std::lock_guard<std::mutex> g(mu_);
        if (pid_ != getpid()) {  // forked child: the parent's workers do not exist here
            workers_.clear();     // (the thread objects are leaked on purpose, never joined)
            pid_ = getpid();
        }
        try {
            workers_.reserve(size_t(n) - 1);  // push_back below never throws
            while (int(workers_.size()) < n - 1) workers_.push_back(new std::thread([this] { loop(); }));
        } catch (...) {
            threads_.store(int(workers_.size()) + 1);
            throw;
        }
        threads_.store(n);
    }
    int threads() const { return threads_.load(); }

    void run(int n, const std::function<void(int)>& fn) {
        const int want = pid_ == getpid() ? std::min(threads_.load(), n) : 1;
        std::unique_lock<std::mutex> job(job_mu_, std::defer_lock);
        if (want <= 1 || !job.try_lock()) {
            for (int i = 0; i < n; ++i) fn(i);
            return;
        }
        error_ = nullptr;
        {
            std::lock_guard<std::mutex> g(mu_);
            fn_ = &fn;
            n_ = n;
            next_.store(0);
            max_workers_ = want - 1;
            joined_ = 0;
            open_ = true;
            generation_.fetch_add(1);
        }
        cv_.notify_all();
        work();
        {
            std::lock_guard<std::mutex> g(mu_);
            open_ = false;  // a worker waking from now on skips this job
        }
        for (int s = 0; active_.load(std::memory_order_acquire) != 0; ++s) {
            if (s < 256) pause();
            else std::this_thread::yield();  // a preempted worker finishes its block sooner
        }
        if (error_) {  // rethrown in the caller (a worker must never terminate the process)
            std::exception_ptr e = error_;
            error_ = nullptr;
            std::rethrow_exception(e);
        }
    }

private:
    ThreadPool() = default;
    static constexpr int SPIN = 200;    // pauses a worker spins for the next job, then
    static constexpr int YIELDS = 300;  // sched_yield polls (~100 us), then it sleeps
    static void pause() {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#else
        std::this_thread::yield();
#endif
    }
    void work() {
        int i;
        while ((i = next_.fetch_add(1)) < n_) {
            try {
                (*fn_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> g(err_mu_);
                if (!error_) error_ = std::current_exception();
                next_.store(n_);  // stop handing out blocks
            }
        }
    }
    void loop() {
        uint64_t seen = generation_.load();
        for (;;) {
            // spin ~tens of microseconds for the next job, then sleep
            for (int s = 0; s < SPIN && generation_.load(std::memory_order_acquire) == seen; ++s) pause();
            // then poll politely (yielding the core to anyone who wants it) before sleeping
            for (int s = 0; s < YIELDS && generation_.load(std::memory_order_acquire) == seen; ++s)
                std::this_thread::yield();
            std::unique_lock<std::mutex> g(mu_);
            cv_.wait(g, [&] { return generation_.load() != seen; });
            seen = generation_.load();
            if (!open_ || joined_ >= max_workers_) continue;
            ++joined_;
            active_.fetch_add(1);
            g.unlock();
            work();
            active_.fetch_sub(1, std::memory_order_release);
        }
    }

    std::mutex job_mu_;  // one job at a time
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::thread*> workers_;
    pid_t pid_ = getpid();
    std::atomic<int> threads_{1};
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> next_{0};
    std::atomic<int> active_{0};
    const std::function<void(int)>* fn_ = nullptr;
    int n_ = 0, max_workers_ = 0, joined_ = 0;
    bool open_ = false;
    std::mutex err_mu_;
    std::exception_ptr error_;
};

}  // namespace rf
