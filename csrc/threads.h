// A small persistent thread pool for splitting a batch into row blocks. Torch-free.
//
// run(n, fn) calls fn(i) for i in [0, n), the caller working too. Workers spin briefly after a
// job (a few microseconds: back-to-back calls wake them cheaply), then sleep, so that they
// never hold a core that torch's own threads need. An
// exception thrown by fn in any thread is rethrown in the caller once every block has stopped. Jobs never nest or queue: a second
// caller that finds the pool busy (another Python thread stepping concurrently) simply runs its
// blocks itself, so concurrent callers are always correct. Results must not depend on which
// thread runs a block (every kernel here writes disjoint rows and draws by row counter).
//
// Size: set_threads(n) starts or stops workers so that exactly n - 1 exist (a smaller n joins
// the surplus ones), so the pool never holds more threads than last asked for.
//
// fork(): pthread_atfork handlers keep the pool usable in a child. Before the fork the forking
// thread takes the job lock and the state lock (waiting for a running job to finish), so the
// child inherits a consistent, idle pool; the parent then releases them. The child has no
// workers (only the forking thread survives a fork): it forgets them, re-creates its locks and
// condition variable (the parent's sleeping workers are phantom waiters there) and runs
// single-threaded until set_threads is called again (ops/cpp.py re-applies its thread count
// in a child through os.register_at_fork).
#pragma once
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <vector>
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
    // max_threads()). Workers beyond n - 1 are stopped and joined; missing ones are started. If
    // the system refuses a thread, the count stays at the workers that exist and the
    // std::system_error propagates (the pool never claims absent workers).
    void set_threads(int n) {
        if (n < 1) n = 1;
        std::lock_guard<std::mutex> job(job_mu_);  // no job runs while the worker set changes
        std::vector<std::thread*> surplus;
        {
            std::lock_guard<std::mutex> g(mu_);
            if (pid_ != getpid()) forget_workers();  // forked without the atfork handlers (paranoia)
            const int want = n - 1;
            while (int(workers_.size()) > want) {
                surplus.push_back(workers_.back());
                workers_.pop_back();
            }
            live_ = int(workers_.size());  // workers with an index >= live_ leave their loop
        }
        if (!surplus.empty()) {
            cv_.notify_all();
            for (std::thread* t : surplus) {
                t->join();
                delete t;
            }
        }
        std::lock_guard<std::mutex> g(mu_);
        try {
            workers_.reserve(size_t(n) - 1);  // push_back below never throws
            while (int(workers_.size()) < n - 1) {
                const int idx = int(workers_.size());
                live_ = idx + 1;  // before the thread starts: it must not see itself as surplus
                try {
                    workers_.push_back(new std::thread([this, idx] { loop(idx); }));
                } catch (...) {
                    live_ = idx;
                    throw;
                }
            }
        } catch (...) {
            threads_.store(int(workers_.size()) + 1);
            throw;
        }
        threads_.store(n);
    }
    int threads() const { return threads_.load(); }
    // Worker threads that exist now (tests: the pool shrinks).
    int workers() {
        std::lock_guard<std::mutex> g(mu_);
        return pid_ == getpid() ? int(workers_.size()) : 0;
    }

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
            max_workers_ = std::min(want - 1, live_);
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
    ThreadPool() {
        instance_ = this;
        pthread_atfork(&ThreadPool::before_fork, &ThreadPool::after_fork_parent, &ThreadPool::after_fork_child);
    }
    static constexpr int SPIN = 200;    // pauses a worker spins for the next job, then
    static constexpr int YIELDS = 300;  // sched_yield polls (~100 us), then it sleeps
    static void pause() {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#else
        std::this_thread::yield();
#endif
    }

    // -- fork handlers (run by fork() in the forking thread; instance_ is set before they are
    // registered, and the pool is never destroyed)
    static inline ThreadPool* instance_ = nullptr;
    static void before_fork() {
        instance_->job_mu_.lock();  // waits for a running job (its threads never need the GIL)
        instance_->mu_.lock();
    }
    static void after_fork_parent() {
        instance_->mu_.unlock();
        instance_->job_mu_.unlock();
    }
    static void after_fork_child() {
        ThreadPool* p = instance_;
        // Only this thread exists here. The locks are held by it (before_fork): release them.
        // The condition variable may count the parent's sleeping workers as waiters, which would
        // make a later notify wait for threads that do not exist: build a fresh one (the old one
        // is abandoned, never destroyed).
        new (&p->cv_) std::condition_variable();
        p->forget_workers();
        p->mu_.unlock();
        p->job_mu_.unlock();
    }
    // The parent's workers do not exist in a forked child: drop them without joining (their
    // std::thread objects are leaked on purpose: destroying a joinable std::thread terminates).
    void forget_workers() {
        workers_.clear();
        live_ = 0;
        open_ = false;
        joined_ = 0;
        max_workers_ = 0;
        active_.store(0);
        error_ = nullptr;
        threads_.store(1);
        pid_ = getpid();
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
    void loop(int idx) {
        uint64_t seen = generation_.load();
        for (;;) {
            // spin ~tens of microseconds for the next job, then sleep
            for (int s = 0; s < SPIN && generation_.load(std::memory_order_acquire) == seen; ++s) pause();
            // then poll politely (yielding the core to anyone who wants it) before sleeping
            for (int s = 0; s < YIELDS && generation_.load(std::memory_order_acquire) == seen; ++s)
                std::this_thread::yield();
            std::unique_lock<std::mutex> g(mu_);
            cv_.wait(g, [&] { return generation_.load() != seen || idx >= live_; });
            if (idx >= live_) return;  // surplus after set_threads shrank the pool
            seen = generation_.load();
            if (!open_ || joined_ >= max_workers_) continue;
            ++joined_;
            active_.fetch_add(1);
            g.unlock();
            work();
            active_.fetch_sub(1, std::memory_order_release);
        }
    }

    std::mutex job_mu_;  // one job (or one resize) at a time
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::thread*> workers_;
    int live_ = 0;  // workers [0, live_) stay; guarded by mu_
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
