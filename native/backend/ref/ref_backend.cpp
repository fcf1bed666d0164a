// The ref backend: compile = parse + per-op build (validate, infer, plan); eval = run the plan.
#include "backend/ref/ref_backend.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "backend/ref/plan.h"
#include "core/fp16.h"
#include "core/threads.h"

namespace anetrain::backend {

namespace ref {

const std::map<std::string, BuildFn>& registry() {
    static const std::map<std::string, BuildFn> r = [] {
        std::map<std::string, BuildFn> m;
        register_const_ops(m);
        register_conv_ops(m);
        register_matmul_ops(m);
        register_elementwise_ops(m);
        register_reduce_ops(m);
        register_softmax_ops(m);
        register_shape_ops(m);
        register_quant_ops(m);
        return m;
    }();
    return r;
}

namespace {

class RefKernel : public Kernel {
public:
    RefKernel(const mil::Program& program, const Blobs& blobs, const std::string& label, bool round16, bool fuse)
        : round16_(round16) {
        const mil::Function& f = program.main();
        label_ = label;
        backend_name_ = "ref";
        inputs_ = input_specs(f);
        outputs_ = output_specs(f);
        std::unordered_map<std::string, Value> values;
        for (const auto& p : f.inputs) {
            Value v;
            v.view.dtype = p.type.dtype;
            v.view.shape = p.type.shape;
            v.view.strides = contiguous_strides(p.type.shape);
            v.view.data = allocate(buffers_, p.type.dtype, p.type.numel(), p.line);
            v.view.input = int(program_inputs_.own.size());
            program_inputs_.own.push_back(v.view);
            values[p.name] = v;
        }
        const size_t n_in = program_inputs_.own.size();
        program_inputs_.feeds.resize(n_in);
        restore_feeds();
        program_inputs_.loaded.assign(n_in, false);
        program_inputs_.exact_only.assign(n_in, false);
        std::unordered_map<std::string, Sink*> sinks = bind_sinks(f);
        const auto& ops = registry();
        std::vector<PlanStep> plan;
        std::vector<size_t> plan_op;  // plan step -> index in f.ops
        for (const auto& op : f.ops) {
            auto it = ops.find(op.type);
            if (it == ops.end()) throw mil::MilError(op.line, "unknown op '" + op.type + "' (the ref backend does not implement it)");
            Builder b(op, values, plan, blobs, round16, buffers_, sinks, program_inputs_);
            it->second(b);
            b.finish();
            plan_op.resize(plan.size(), op_labels_.size());
            op_labels_.push_back("line " + std::to_string(op.line) + " " + op.type + " -> " + first_output(op));
        }
        for (size_t i = 0; i < f.outputs.size(); ++i) {
            const std::string& name = f.outputs[i];
            const Value& v = values.at(name);
            if (v.view.dtype == DType::string || !storable(v.view.dtype))
                throw mil::MilError(f.outputs_line, "returned value '" + name + "' must be a numeric tensor");
            out_views_.push_back(v.view);
            if (v.view.input >= 0) program_inputs_.loaded[size_t(v.view.input)] = true;  // store_output reads it
            // Non-contiguous float outputs are gathered here before conversion to fp16.
            scratch_.push_back(v.view.contiguous() ? nullptr : allocate(buffers_, DType::fp32, v.view.numel(), f.outputs_line));
        }
        const char* fuse_env = std::getenv("ANETRAIN_REF_FUSE");
        if (fuse_env && std::string(fuse_env) == "0") fuse = false;
        std::vector<FusedRun> runs;
        if (fuse) runs = fuse_plan(plan, uses(f, values, plan_op), &program_inputs_.in_place);
        size_t next = 0;
        for (size_t s = 0; s < plan.size();) {
            if (next < runs.size() && runs[next].first == s) {
                FusedRun& run = runs[next++];
                steps_.push_back(std::move(run.run));
                step_op_.push_back(op_labels_.size());
                op_labels_.push_back(run_label(f, plan_op, run.first, run.last));
                s = run.last;
            } else {
                steps_.push_back(std::move(plan[s].run));
                step_op_.push_back(plan_op[s]);
                ++s;
            }
        }
        const char* prof = std::getenv("ANETRAIN_REF_PROFILE");
        profiling_ = prof && *prof && std::string(prof) != "0";
        if (profiling_) op_ms_.assign(op_labels_.size(), 0.0);
    }

    void eval(const std::vector<HostTensor>& in, const std::vector<HostTensor>& out) override {
        std::lock_guard<std::mutex> lk(mu_);
        try {
            check_host_tensors(inputs_, in, "input");
            check_host_tensors(outputs_, out, "output");
            for (size_t i = 0; i < in.size(); ++i) feed_input(i, in[i], out);
            for (size_t i = 0; i < out.size(); ++i)
                if (sinks_[i]) {
                    sinks_[i]->data = out[i].data;
                    sinks_[i]->dtype = out[i].dtype;
                }
            if (profiling_) {
                ++profiled_evals_;
                for (size_t s = 0; s < steps_.size(); ++s) {
                    const auto t0 = Clock::now();
                    steps_[s]();
                    op_ms_[step_op_[s]] += ms_since(t0);
                }
            } else {
                for (const auto& step : steps_) step();
            }
            IoTimer io{io_ms_};
            for (size_t i = 0; i < out.size(); ++i)
                if (!sinks_[i] || !sinks_[i]->claimed) store_output(out_views_[i], scratch_[i], out[i]);
        } catch (const BackendError&) {
            unbind_sinks();
            restore_feeds();
            poison_outputs(out);
            throw;
        } catch (const std::exception& e) {
            unbind_sinks();
            restore_feeds();
            poison_outputs(out);
            throw BackendError(std::string("ref evaluation failed: ") + e.what());
        }
        unbind_sinks();
        restore_feeds();
    }

    // ANETRAIN_REF_PROFILE=1: time per op, printed to stderr (slowest first) when the kernel goes.
    ~RefKernel() override {
        if (!profiling_ || profiled_evals_ == 0) return;
        std::vector<size_t> order(op_ms_.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return op_ms_[a] > op_ms_[b]; });
        double total = 0;
        for (double t : op_ms_) total += t;
        std::fprintf(stderr, "ref profile of '%s': %.3f ms of ops per eval over %lld evals, io %.3f ms per eval\n",
                     label_.c_str(), total / profiled_evals_, (long long)profiled_evals_, io_ms_ / profiled_evals_);
        for (size_t i : order)
            if (op_ms_[i] > 0.0)
                std::fprintf(stderr, "  %8.3f ms  %s\n", op_ms_[i] / profiled_evals_, op_labels_[i].c_str());
    }

private:
    static std::string first_output(const mil::Op& op) { return op.outputs.empty() ? std::string("?") : op.outputs[0]; }

    // "lines 20-23 mul+add+softmax -> probs": the ops whose plan steps [first, last) were fused.
    static std::string run_label(const mil::Function& f, const std::vector<size_t>& plan_op, size_t first, size_t last) {
        const mil::Op& a = f.ops[plan_op[first]];
        const mil::Op& z = f.ops[plan_op[last - 1]];
        std::string label = a.line == z.line ? "line " + std::to_string(a.line)
                                             : "lines " + std::to_string(a.line) + "-" + std::to_string(z.line);
        for (size_t s = first; s < last; ++s)
            if (s == first || plan_op[s] != plan_op[s - 1]) label += (s == first ? " " : "+") + f.ops[plan_op[s]].type;
        return label + " -> " + first_output(z);
    }

    // What the plan reads, for fusion (see Use): each op reads every value it names, up to its
    // last plan step (ops without steps, the views, read nothing: their results are values
    // too, which name the same bytes), and the caller reads the returned values.
    std::vector<Use> uses(const mil::Function& f, const std::unordered_map<std::string, Value>& values,
                          const std::vector<size_t>& plan_op) const {
        std::vector<Use> out;
        auto add = [&](const View& v, size_t step) {
            if (!v.data || !storable(v.dtype) || v.numel() == 0) return;
            const Ranged::Access a = ranged_access(v.data, store_size(store_of(v.dtype)), v.shape, v.strides);
            out.push_back({a.lo, a.hi, step});
        };
        std::vector<size_t> last_step(f.ops.size(), SIZE_MAX);
        for (size_t s = 0; s < plan_op.size(); ++s) last_step[plan_op[s]] = s;
        std::function<void(const mil::Arg&, size_t)> named = [&](const mil::Arg& a, size_t step) {
            auto it = a.kind == mil::Arg::Kind::Ref ? values.find(a.ref) : values.end();
            if (it != values.end()) add(it->second.view, step);
            for (const auto& item : a.items) named(item, step);
        };
        for (size_t o = 0; o < f.ops.size(); ++o) {
            if (last_step[o] == SIZE_MAX) continue;
            for (const auto& kv : f.ops[o].args) named(kv.second, last_step[o]);
            for (const auto& kv : f.ops[o].attrs) named(kv.second, last_step[o]);
        }
        for (const View& v : out_views_) add(v, SIZE_MAX);
        return out;
    }

    // Sinks for returned op outputs that no later op reads (returned once, float, produced by
    // a statement): the producing op writes them straight into the caller's buffer.
    std::unordered_map<std::string, Sink*> bind_sinks(const mil::Function& f) {
        std::unordered_map<std::string, int> returned, read;
        for (const auto& name : f.outputs) ++returned[name];
        std::function<void(const mil::Arg&)> mark = [&](const mil::Arg& a) {
            if (a.kind == mil::Arg::Kind::Ref) ++read[a.ref];
            for (const auto& item : a.items) mark(item);
        };
        for (const auto& op : f.ops) {
            for (const auto& kv : op.args) mark(kv.second);
            for (const auto& kv : op.attrs) mark(kv.second);
        }
        std::unordered_map<std::string, Sink*> sinks;
        sinks_.resize(f.outputs.size());
        for (const auto& op : f.ops)
            for (size_t j = 0; j < op.outputs.size(); ++j) {
                const std::string& name = op.outputs[j];
                if (returned[name] != 1 || read.count(name) || !mil::is_float(op.output_types[j].dtype)) continue;
                for (size_t i = 0; i < f.outputs.size(); ++i)
                    if (f.outputs[i] == name) {
                        sinks_[i] = std::make_unique<Sink>();
                        sinks[name] = sinks_[i].get();
                    }
            }
        return sinks;
    }

    void unbind_sinks() {
        for (auto& s : sinks_)
            if (s) s->data = nullptr;
    }

    // Input i for this evaluation: read in place from the caller's buffer when the plan allows it
    // (see Inputs), the buffer is aligned and no output overlaps it (an op could overwrite it
    // before another reads it); else copied/converted into the kernel's own buffer.
    void feed_input(size_t i, const HostTensor& h, const std::vector<HostTensor>& out) {
        const View& v = program_inputs_.own[i];
        Feed feed = Feed::exact;
        if (h.dtype == DType::fp16)
            feed = Feed::f16;
        else if (v.dtype == DType::fp16 && round16_ && !h.fp16_exact)
            feed = Feed::round16;
        const size_t size = mil::dtype_size(h.dtype);
        const uintptr_t lo = reinterpret_cast<uintptr_t>(h.data), hi = lo + size_t(h.numel) * size;
        bool in_place = !program_inputs_.loaded[i] && (feed == Feed::exact || !program_inputs_.exact_only[i]) && lo % size == 0;
        for (const HostTensor& o : out) {
            const uintptr_t olo = reinterpret_cast<uintptr_t>(o.data);
            if (olo < hi && lo < olo + size_t(o.numel) * mil::dtype_size(o.dtype)) in_place = false;
        }
        if (in_place) {
            program_inputs_.feeds[i] = {h.data, feed};
            // ranged ops reach it through the tile (only as it is: they cannot convert)
            if (feed == Feed::exact)
                program_inputs_.in_place.moved.push_back({v.data, reinterpret_cast<uintptr_t>(h.data), size_t(h.numel) * size});
        } else {
            IoTimer io{io_ms_};
            load_input(v, h, feed);
        }
    }

    // Outside eval every feed is the kernel's own buffer: no caller pointer is kept.
    void restore_feeds() {
        program_inputs_.in_place.moved.clear();
        for (size_t i = 0; i < program_inputs_.own.size(); ++i) program_inputs_.feeds[i] = {program_inputs_.own[i].data, Feed::exact};
    }

    // Copies or converts input h into the kernel's own buffer v, as `feed` says. Split over the
    // pool: the caller's data is usually cold (just written by the trainer), and one thread
    // cannot use the memory bandwidth of two (fp16's bulk conversions split only from 1M
    // elements, a threshold measured on cache-hot data).
    void load_input(const View& v, const HostTensor& h, Feed feed) {
        const size_t size = mil::dtype_size(h.dtype);
        threads::parallel_for(size_t(h.numel), size_t(1) << 15, [&](size_t b, size_t e) {
            if (feed == Feed::f16)
                fp16::f16_to_f32(static_cast<const uint16_t*>(h.data) + b, v.f() + b, e - b);
            else if (feed == Feed::round16)
                fp16::round_f32(static_cast<const float*>(h.data) + b, v.f() + b, e - b);
            else
                std::memcpy(static_cast<char*>(v.data) + b * size, static_cast<const char*>(h.data) + b * size,
                            (e - b) * size);
        });
    }

    static void store_output(const View& v, void* scratch, const HostTensor& h) {
        size_t n = size_t(h.numel);
        if (h.dtype == DType::fp16) {
            const float* src = v.f();
            if (scratch) {
                copy_strided(v, scratch, contiguous_strides(v.shape));
                src = static_cast<const float*>(scratch);
            }
            fp16::f32_to_f16(src, static_cast<uint16_t*>(h.data), n);
        } else {
            copy_strided(v, h.data, contiguous_strides(v.shape));
        }
    }

    bool round16_;
    std::mutex mu_;
    Arena buffers_;
    std::vector<Step> steps_;
    Inputs program_inputs_;
    std::vector<View> out_views_;
    std::vector<void*> scratch_;
    std::vector<std::unique_ptr<Sink>> sinks_;  // per returned output; null when not bindable
    // profiling (ANETRAIN_REF_PROFILE)
    std::vector<size_t> step_op_;         // step -> label index
    std::vector<std::string> op_labels_;  // per op "line N type -> output", then per fused run
    std::vector<double> op_ms_;
    bool profiling_ = false;
    long long profiled_evals_ = 0;
};

class RefBackend : public Backend {
public:
    explicit RefBackend(const RefOptions& o) : Backend(o.compile_budget), round16_(o.fp16_rounding), fuse_(o.fuse) {}
    std::string name() const override { return "ref"; }
    bool supports(const std::string& op) const override { return registry().count(op) != 0; }

protected:
    std::unique_ptr<Kernel> compile_program(const mil::Program& program, const std::string&, const Blobs& blobs,
                                            const std::string& label) override {
        return std::make_unique<RefKernel>(program, blobs, label, round16_, fuse_);
    }

private:
    bool round16_;
    bool fuse_;
};

}  // namespace
}  // namespace ref

std::shared_ptr<Backend> make_ref_backend(const RefOptions& options) { return std::make_shared<ref::RefBackend>(options); }

}  // namespace anetrain::backend
