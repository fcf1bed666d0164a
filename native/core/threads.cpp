#include "core/threads.h"

#include "core/timer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace anetrain::threads {
namespace {

thread_local bool tl_in_pool = false;

// Waiting threads spin this long before they sleep. A sleeping thread costs a futex wake, and on
// a VM waking an idle vCPU takes tens of microseconds; a kernel runs dozens of parallel regions
// separated by microseconds of serial work, so sleeping between them was costing more than the
// regions' own synchronisation. ANETRAIN_SPIN_US overrides (0 = always sleep).
std::chrono::nanoseconds spin_budget() {
    static const long us = [] {
        const char* env = std::getenv("ANETRAIN_SPIN_US");
        return env && *env ? std::max(0L, std::atol(env)) : 300L;
    }();
    return std::chrono::microseconds(us);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Spins until pred() or the spin budget runs out; returns pred().
template <class Pred>
bool spin_until(Pred pred) {
    if (pred()) return true;
    const auto budget = spin_budget();
    if (budget.count() == 0) return false;
    const auto end = std::chrono::steady_clock::now() + budget;
    for (;;) {
        for (int i = 0; i < 64; ++i) {
            cpu_relax();
            if (pred()) return true;
        }
        if (std::chrono::steady_clock::now() >= end) return pred();
    }
}

int default_threads() {
    if (const char* env = std::getenv("ANETRAIN_NUM_THREADS")) {
        int v = std::atoi(env);
        if (v > 0) return v;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? int(hc) : 1;
}

class Pool {
public:
    static Pool& get() {
        static Pool* p = new Pool();  // leaked on purpose: no join at static-destruction time
        return *p;
    }

    int threads() const { return nthreads_; }

    void resize(int n) {
        std::lock_guard<std::mutex> run(run_mu_);
        stop_workers();
        nthreads_ = std::max(1, n);
        start_workers();
    }

    void run(size_t nchunks, const std::function<void(size_t)>& task) {
        std::lock_guard<std::mutex> run(run_mu_);  // one parallel region at a time
        {
            std::lock_guard<std::mutex> lk(mu_);
            task_ = &task;
            nchunks_ = nchunks;
            next_ = 0;
            done_.store(0, std::memory_order_relaxed);
            error_ = nullptr;
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        work();
        spin_until([&] { return done_.load(std::memory_order_acquire) == nchunks; });
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return done_.load(std::memory_order_relaxed) == nchunks_; });
        task_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    Pool() : nthreads_(default_threads()) { start_workers(); }

    void start_workers() {
        quit_ = false;
        for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this] { loop(); });
    }
    void stop_workers() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            quit_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
        workers_.clear();
    }

    void loop() {
        tl_in_pool = true;
        uint64_t seen = 0;
        for (;;) {
            spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return quit_ || generation_.load(std::memory_order_relaxed) != seen; });
                if (quit_) return;
                seen = generation_.load(std::memory_order_relaxed);
            }
            work();
        }
    }

    void work() {
        bool was = tl_in_pool;
        tl_in_pool = true;
        for (;;) {
            size_t i;
            const std::function<void(size_t)>* task;
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (!task_ || next_ >= nchunks_) break;
                i = next_++;
                task = task_;
            }
            try {
                (*task)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lk(mu_);
                if (!error_) error_ = std::current_exception();
            }
            std::lock_guard<std::mutex> lk(mu_);
            if (done_.fetch_add(1, std::memory_order_release) + 1 == nchunks_) done_cv_.notify_all();
        }
        tl_in_pool = was;
    }

    std::mutex run_mu_, mu_;
    std::condition_variable cv_, done_cv_;
    std::vector<std::thread> workers_;
    int nthreads_;
    bool quit_ = false;
    std::atomic<uint64_t> generation_{0};  // written under mu_, read lock-free while spinning
    const std::function<void(size_t)>* task_ = nullptr;
    size_t nchunks_ = 0, next_ = 0;
    std::atomic<size_t> done_{0};  // written under mu_, read lock-free while spinning
    std::exception_ptr error_;
};

}  // namespace

int num_threads() { return Pool::get().threads(); }
void set_num_threads(int n) { Pool::get().resize(n); }

void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
    if (n == 0) return;
    grain = std::max<size_t>(grain, 1);
    Pool& pool = Pool::get();
    const size_t t = size_t(pool.threads());
    if (t <= 1 || n <= grain || tl_in_pool) return fn(0, n);
    // a few chunks per thread for balance, each a multiple of grain
    size_t chunks = std::min((n + grain - 1) / grain, t * 4);
    size_t per = (n + chunks - 1) / chunks;
    per = (per + grain - 1) / grain * grain;
    chunks = (n + per - 1) / per;
    pool.run(chunks, [&](size_t c) {
        size_t b = c * per, e = std::min(n, b + per);
        fn(b, e);
    });
}

void for_each_item(size_t n, const std::function<void(size_t, size_t)>& fn) {
    std::atomic<size_t> next{0};
    parallel_for(std::min(n, size_t(num_threads())), 1, [&](size_t s0, size_t s1) {
        for (size_t s = s0; s < s1; ++s)
            for (size_t i; (i = next.fetch_add(1)) < n;) fn(s, i);
    });
}

SerialQueue::SerialQueue(bool threaded, double& busy_ms) : busy_(busy_ms) {
    if (threaded) worker_ = std::thread([this] { loop(); });
}

SerialQueue::~SerialQueue() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        quit_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
}

void SerialQueue::submit(std::function<void()> job) {
    if (!worker_.joinable()) {
        ScopedTimer t{busy_};
        job();
        return;
    }
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.push_back(std::move(job));
    cv_.notify_all();
}

void SerialQueue::drain() {
    std::unique_lock<std::mutex> lk(mu_);
    idle_cv_.wait(lk, [&] { return jobs_.empty() && !running_; });
    if (error_) {
        auto e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

void SerialQueue::loop() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [&] { return quit_ || !jobs_.empty(); });
            if (jobs_.empty()) return;
            job = std::move(jobs_.front());
            jobs_.pop_front();
            running_ = true;
        }
        const auto t0 = Clock::now();
        std::exception_ptr err;
        try {
            job();
        } catch (...) {
            err = std::current_exception();
        }
        std::lock_guard<std::mutex> lk(mu_);
        busy_ += ms_since(t0);
        if (err && !error_) error_ = err;
        running_ = false;
        if (jobs_.empty()) idle_cv_.notify_all();
    }
}

}  // namespace anetrain::threads
