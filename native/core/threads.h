// A small persistent thread pool for the CPU work that is not BLAS: fp16 conversion,
// element-wise ops, reductions. BLAS runs its own threads. One pool per process.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace anetrain::threads {

// Number of threads parallel_for uses (workers + the caller). Default: hardware concurrency,
// or ANETRAIN_NUM_THREADS when set.
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` elements, on the pool and the
// calling thread, and returns when all chunks are done. Runs inline when the range is small,
// when only one thread is configured, or when called from inside a pool task (no nesting).
// Exceptions thrown by fn are rethrown on the caller.
void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

// Calls fn(slot, i) for every i in [0, n): one task per thread (at most n), each taking the next
// i until none is left, for items of uneven cost or a count that parallel_for's few big ranges
// would split unevenly. `slot` (< num_threads()) is the task's index, for per-task scratch;
// which items a slot gets depends on scheduling. A single item runs on the caller as it is.
void for_each_item(size_t n, const std::function<void(size_t slot, size_t i)>& fn);

// Jobs run one at a time, in order, on one worker thread of their own (threaded) or on the
// caller as they are submitted; the milliseconds spent running them add up in `busy_ms`. For
// work that overlaps another device's (the trainer's dW products while the ANE evaluates).
class SerialQueue {
public:
    SerialQueue(bool threaded, double& busy_ms);
    ~SerialQueue();  // waits for the jobs already submitted
    SerialQueue(const SerialQueue&) = delete;
    SerialQueue& operator=(const SerialQueue&) = delete;

    void submit(std::function<void()> job);
    // Waits until every submitted job has run; rethrows the first failure since the last drain.
    void drain();

private:
    void loop();

    double& busy_;
    std::thread worker_;
    std::mutex mu_;
    std::condition_variable cv_, idle_cv_;
    std::deque<std::function<void()>> jobs_;
    bool running_ = false, quit_ = false;
    std::exception_ptr error_;
};

}  // namespace anetrain::threads
