// The Apple Neural Engine runtime over the private AppleNeuralEngine.framework (macOS, ARC).
//
// Call sequence (shared reference ane-facts.md 1.2): descriptor from MIL text + weight blobs ->
// in-memory model -> model directory written -> compile -> load -> IOSurfaces wrapped as
// _ANEIOSurfaceObject -> one _ANERequest per slot, built once -> evaluate -> unload.
// Every private class is resolved by name and every message goes through objc_msgSend cast
// to the exact function type of the selector. This file exposes plain C++ (runtime.h), may
// throw BackendError, and never catches C++ exceptions; no exception is thrown inside an
// @autoreleasepool (see Failure). Model directories are kept by model_dirs.h. It is
// ARC/MRC-neutral so the Linux check (.ci/objc_check.sh) can type-check it without ARC.
#import <Foundation/Foundation.h>

#include <CoreFoundation/CoreFoundation.h>
#include <IOSurface/IOSurfaceRef.h>
#include <dlfcn.h>
#include <objc/message.h>
#include <objc/runtime.h>
#include <sys/sysctl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/ane/model_dirs.h"
#include "backend/ane/runtime.h"

#if __has_feature(objc_arc)
#define ANE_BRIDGE __bridge
#define ANE_RETAIN(x) (x)
#define ANE_RELEASE(x) ((void)0)
#else
#define ANE_BRIDGE
#define ANE_RETAIN(x) [(x) retain]
#define ANE_RELEASE(x) [(x) release]
#endif

namespace anetrain::backend::ane {

namespace {

const char* const kFrameworkPath = "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine";
const char* const kDescriptorClass = "_ANEInMemoryModelDescriptor";
const char* const kModelClass = "_ANEInMemoryModel";
const char* const kRequestClass = "_ANERequest";
const char* const kSurfaceObjectClass = "_ANEIOSurfaceObject";
const char* const kModelPathPrefix = "@model_path/";

// Exact function types of the selectors used (receiver, selector, arguments).
using DescriptorFactoryFn = id (*)(id, SEL, NSData*, NSDictionary*, NSDictionary*);  // modelWithMILText:weights:optionsPlist:
using ModelFactoryFn = id (*)(id, SEL, id);                                           // inMemoryModelWithDescriptor:
using StringGetterFn = NSString* (*)(id, SEL);                                       // hexStringIdentifier, aneSubType
using QosOptionsErrorFn = BOOL (*)(id, SEL, unsigned int, NSDictionary*, NSError**); // compileWithQoS / loadWithQoS
using EvaluateFn = BOOL (*)(id, SEL, unsigned int, NSDictionary*, id, NSError**);    // evaluateWithQoS:options:request:error:
using UnloadFn = BOOL (*)(id, SEL, unsigned int, NSError**);                         // unloadWithQoS:error:
using SurfaceObjectFn = id (*)(id, SEL, IOSurfaceRef);                                // objectWithIOSurface:
using RequestFactoryFn = id (*)(id, SEL, NSArray*, NSArray*, NSArray*, NSArray*, id, id, id);
using SetMaskFn = void (*)(id, SEL, unsigned int);                                    // setPerfStatsMask:
using ObjectGetterFn = id (*)(id, SEL);                                               // perfStats
using SignalEventFn = id (*)(id, SEL, unsigned long long, unsigned int, long long, id);
using WaitEventFn = id (*)(id, SEL, unsigned long long, id);

NSString* ns(const std::string& s) { return [NSString stringWithUTF8String:s.c_str()]; }

std::string utf8(NSString* s) {
    const char* c = s ? [s UTF8String] : nullptr;
    return c ? std::string(c) : std::string();
}

std::string describe(NSError* error) {
    if (!error) return "no error description from the framework";
    return utf8([error description]);
}

// A C++ exception must never cross an @autoreleasepool: code inside a pool records what went
// wrong here, and the throw happens after the pool has ended. The first failure is the one told.
class Failure {
public:
    bool failed() const { return !message_.empty(); }
    void fail(const std::string& message) {
        if (message_.empty()) message_ = message;
    }
    void raise() const {
        if (failed()) throw BackendError(message_);
    }

private:
    std::string message_;
};

Class find_class(const char* name, Failure& failure) {
    Class cls = NSClassFromString(ns(name));
    if (!cls) failure.fail(std::string("AppleNeuralEngine.framework has no class ") + name + " on this macOS");
    return cls;
}

// `selector` when `target` (a class or an instance) answers it; otherwise records why not.
SEL find_selector(id target, const char* selector, Failure& failure) {
    SEL sel = sel_registerName(selector);
    if (![target respondsToSelector:sel])
        failure.fail(std::string("AppleNeuralEngine.framework does not answer ") + selector +
                     " on this macOS; report the macOS version (see docs/macos.md)");
    return sel;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

bool apple_silicon() {
#if defined(__arm64__) || defined(__aarch64__)
    return true;
#else
    return false;
#endif
}

PlatformStatus load_framework() {
    PlatformStatus status;
    if (!apple_silicon()) {
        status.reason = "this Mac has an Intel CPU; the Apple Neural Engine needs Apple silicon";
        return status;
    }
    if (!dlopen(kFrameworkPath, RTLD_NOW)) {
        const char* why = dlerror();
        status.reason = std::string("cannot load AppleNeuralEngine.framework: ") + (why ? why : "unknown dlopen error");
        return status;
    }
    @autoreleasepool {
        for (const char* name : {kDescriptorClass, kModelClass, kRequestClass, kSurfaceObjectClass})
            if (!NSClassFromString(ns(name))) {
                status.reason = std::string("AppleNeuralEngine.framework loaded but has no class ") + name;
                break;
            }
    }
    status.available = status.reason.empty();
    return status;
}

std::string sysctl_string(const char* name) {
    size_t len = 0;
    if (sysctlbyname(name, nullptr, &len, nullptr, 0) != 0 || len == 0) return "";
    std::string value(len, '\0');
    if (sysctlbyname(name, &value[0], &len, nullptr, 0) != 0) return "";
    value.resize(std::strlen(value.c_str()));
    return value;
}

std::atomic<int64_t> g_compiles{0};

// The framework puts every model directory here (NSTemporaryDirectory()/<hexStringIdentifier>).
std::string temp_root() {
    std::string root;
    @autoreleasepool {
        root = utf8(NSTemporaryDirectory());
    }
    return root;
}

void write_file(const std::string& path, const void* data, size_t n, Failure& failure) {
    NSData* bytes = [NSData dataWithBytes:data length:n];
    if (![bytes writeToFile:ns(path) atomically:NO])
        failure.fail("cannot write " + path + "; check free space and permissions of the temporary directory");
}

// "<dir>/<key without @model_path/>"; "" (and a recorded failure) for keys that would leave the
// model directory.
std::string model_file_path(const std::string& dir, const std::string& key, Failure& failure) {
    const std::string prefix = kModelPathPrefix;
    if (key.compare(0, prefix.size(), prefix) != 0 || key.find("..") != std::string::npos) {
        failure.fail("weight blob key '" + key + "' must look like @model_path/weights/<name>.bin");
        return "";
    }
    return dir + "/" + key.substr(prefix.size());
}

// A zeroed IOSurface of `alloc_bytes`, or nullptr with the failure recorded.
IOSurfaceRef create_surface(size_t alloc_bytes, Failure& failure) {
    NSDictionary* props = @{
        (ANE_BRIDGE NSString*)kIOSurfaceWidth : @(alloc_bytes),
        (ANE_BRIDGE NSString*)kIOSurfaceHeight : @1,
        (ANE_BRIDGE NSString*)kIOSurfaceBytesPerElement : @1,
        (ANE_BRIDGE NSString*)kIOSurfaceBytesPerRow : @(alloc_bytes),
        (ANE_BRIDGE NSString*)kIOSurfaceAllocSize : @(alloc_bytes),
        (ANE_BRIDGE NSString*)kIOSurfacePixelFormat : @0,
    };
    IOSurfaceRef surface = IOSurfaceCreate((ANE_BRIDGE CFDictionaryRef)props);
    if (!surface) {
        failure.fail("IOSurfaceCreate failed for " + std::to_string(alloc_bytes) + " bytes");
        return nullptr;
    }
    IOSurfaceLock(surface, 0, nullptr);
    std::memset(IOSurfaceGetBaseAddress(surface), 0, alloc_bytes);
    IOSurfaceUnlock(surface, 0, nullptr);
    return surface;
}

id wrap_surface(IOSurfaceRef surface, Failure& failure) {
    Class cls = find_class(kSurfaceObjectClass, failure);
    if (failure.failed()) return nil;
    SEL sel = find_selector(cls, "objectWithIOSurface:", failure);
    if (failure.failed()) return nil;
    id wrapper = ((SurfaceObjectFn)objc_msgSend)(cls, sel, surface);
    if (!wrapper) failure.fail("_ANEIOSurfaceObject objectWithIOSurface: returned nil");
    return wrapper;
}

NSArray* index_array(size_t n) {
    NSMutableArray* a = [NSMutableArray arrayWithCapacity:n];
    for (size_t k = 0; k < n; ++k) [a addObject:@(k)];
    return a;
}

id make_request(NSArray* inputs, NSArray* outputs, id weights_buffer, id procedure_index, Failure& failure) {
    Class cls = find_class(kRequestClass, failure);
    if (failure.failed()) return nil;
    SEL sel = find_selector(
        cls, "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:", failure);
    if (failure.failed()) return nil;
    id request = ((RequestFactoryFn)objc_msgSend)(cls, sel, inputs, index_array([inputs count]), outputs,
                                                  index_array([outputs count]), weights_buffer, nil, procedure_index);
    if (!request) failure.fail("_ANERequest creation returned nil");
    return request;
}

// One evaluation of `request` on `model`; records the framework's message on failure.
void evaluate_on(id model, unsigned qos, id request, Failure& failure) {
    SEL sel = find_selector(model, "evaluateWithQoS:options:request:error:", failure);
    if (failure.failed()) return;
    NSError* error = nil;
    if (!((EvaluateFn)objc_msgSend)(model, sel, qos, @{}, request, &error))
        failure.fail("ANE evaluation failed: " + describe(error));
}

std::vector<std::string> method_names(Class cls) {
    std::vector<std::string> names;
    unsigned int n = 0;
    Method* methods = class_copyMethodList(cls, &n);
    for (unsigned int i = 0; i < n; ++i) names.push_back(sel_getName(method_getName(methods[i])));
    free(methods);
    return names;
}

}  // namespace

// ------------------------------------------------------------------ platform queries

const PlatformStatus& platform_status() {
    static const PlatformStatus status = load_framework();
    return status;
}

int64_t process_compiles() { return g_compiles.load(); }

ChipInfo detect_chip() {
    ChipInfo chip;
    chip.brand = sysctl_string("machdep.cpu.brand_string");
    chip.model = sysctl_string("hw.model");
    if (!platform_status().available) return chip;
    @autoreleasepool {
        Class info = NSClassFromString(@"_ANEDeviceInfo");
        SEL sel = sel_registerName("aneSubType");
        if (info && [info respondsToSelector:sel]) {
            id value = ((ObjectGetterFn)objc_msgSend)(info, sel);
            if (value) chip.ane_subtype = utf8([value description]);
        }
    }
    return chip;
}

std::vector<std::string> framework_classes(const std::string& prefix) {
    std::vector<std::string> names;
    if (!platform_status().available) return names;
    int n = objc_getClassList(nullptr, 0);
    if (n <= 0) return names;
    // A plain buffer of unretained Class pointers, as the runtime fills it (ARC-clean).
    __unsafe_unretained Class* classes = static_cast<__unsafe_unretained Class*>(std::calloc(size_t(n), sizeof(Class)));
    if (!classes) return names;
    n = objc_getClassList(classes, n);
    for (int i = 0; i < n; ++i) {
        const char* name = class_getName(classes[i]);
        if (name && std::strncmp(name, prefix.c_str(), prefix.size()) == 0) names.push_back(name);
    }
    std::free(classes);
    return names;
}

ClassInfo describe_class(const std::string& name) {
    ClassInfo info;
    if (!platform_status().available) return info;
    Class cls = NSClassFromString(ns(name));
    if (!cls) return info;
    info.exists = true;
    info.instance_methods = method_names(cls);
    info.class_methods = method_names(object_getClass(cls));
    unsigned int n = 0;
    objc_property_t* props = class_copyPropertyList(cls, &n);
    for (unsigned int i = 0; i < n; ++i) info.properties.push_back(property_getName(props[i]));
    free(props);
    return info;
}

bool class_answers(const std::string& name, const std::string& selector, bool class_method) {
    if (!platform_status().available) return false;
    bool answers = false;
    @autoreleasepool {
        Class cls = NSClassFromString(ns(name));
        SEL sel = sel_registerName(selector.c_str());
        if (cls) answers = (class_method ? class_getClassMethod(cls, sel) : class_getInstanceMethod(cls, sel)) != nullptr;
    }
    return answers;
}

std::vector<std::string> shared_event_probe() {
    std::vector<std::string> lines;
    if (!platform_status().available) return lines;
    @autoreleasepool {
        Class eventClass = NSClassFromString(@"IOSurfaceSharedEvent");
        id shared = eventClass ? [[eventClass alloc] init] : nil;
        lines.push_back(std::string("IOSurfaceSharedEvent: ") + (shared ? utf8([shared description]) : "unavailable"));
        Class signalClass = NSClassFromString(@"_ANESharedSignalEvent");
        SEL signalSel = sel_registerName("signalEventWithValue:symbolIndex:eventType:sharedEvent:");
        if (shared && signalClass && [signalClass respondsToSelector:signalSel]) {
            id ev = ((SignalEventFn)objc_msgSend)(signalClass, signalSel, 1ULL, 0U, 0LL, shared);
            lines.push_back(std::string("_ANESharedSignalEvent: ") + (ev ? utf8([ev description]) : "nil"));
        } else {
            lines.push_back("_ANESharedSignalEvent: factory not available");
        }
        Class waitClass = NSClassFromString(@"_ANESharedWaitEvent");
        SEL waitSel = sel_registerName("waitEventWithValue:sharedEvent:");
        if (shared && waitClass && [waitClass respondsToSelector:waitSel]) {
            id ev = ((WaitEventFn)objc_msgSend)(waitClass, waitSel, 1ULL, shared);
            lines.push_back(std::string("_ANESharedWaitEvent: ") + (ev ? utf8([ev description]) : "nil"));
        } else {
            lines.push_back("_ANESharedWaitEvent: factory not available");
        }
        ANE_RELEASE(shared);
    }
    return lines;
}

// ------------------------------------------------------------------ model directories

std::vector<std::string> sweep_stale_model_dirs() {
    static std::once_flag once;
    static std::vector<std::string> removed;
    std::call_once(once, [] { removed = sweep_stale(temp_root()); });
    return removed;
}

// ------------------------------------------------------------------ Program

// Each step below runs inside an @autoreleasepool opened by its caller and records its failure
// in `failure` instead of throwing; a step does nothing once an earlier one has failed.
struct Program::Impl {
    Impl(SurfaceTable t, unsigned q) : table(std::move(t)), qos(q) {}
    ~Impl();

    void create_model(const std::string& mil_text, const Blobs& blobs, Failure& failure);
    void write_model_dir(const std::string& mil_text, const Blobs& blobs, Failure& failure);
    void compile(Failure& failure);
    void load(Failure& failure);
    void unload();
    void add_surfaces_up_to(size_t count, Failure& failure);
    void add_request(size_t slot, Failure& failure);

    SurfaceTable table;
    unsigned qos;
    id model = nil;
    bool loaded = false;
    std::string dir;
    bool dir_registered = false;         // this program counts as one user of `dir`
    std::vector<IOSurfaceRef> surfaces;  // by surface id
    std::vector<id> wrappers;            // _ANEIOSurfaceObject per surface id
    std::vector<id> requests;            // per slot
    ProgramTimings timings;
};

Program::Impl::~Impl() {
    @autoreleasepool {
        unload();
#if !__has_feature(objc_arc)
        for (id r : requests) [r release];
        for (id w : wrappers) [w release];
        [model release];
#endif
        requests.clear();
        wrappers.clear();
        for (IOSurfaceRef s : surfaces) CFRelease(s);
        surfaces.clear();
        model = nil;
    }
    // Identical programs share the directory: only its last user removes it.
    if (dir_registered) unregister_model_dir(dir);
}

// The descriptor, the in-memory model and the directory name the framework gives it.
void Program::Impl::create_model(const std::string& mil_text, const Blobs& blobs, Failure& failure) {
    NSData* mil = [NSData dataWithBytes:mil_text.data() length:mil_text.size()];
    // Always a dictionary, empty for weight-free programs: nil silently breaks compilation.
    NSMutableDictionary* weights = [NSMutableDictionary dictionary];
    for (const auto& [key, bytes] : blobs) {
        NSData* data = [NSData dataWithBytes:bytes.data() length:bytes.size()];
        [weights setObject:@{@"offset" : @0, @"data" : data} forKey:ns(key)];
    }
    Class descriptorClass = find_class(kDescriptorClass, failure);
    if (failure.failed()) return;
    SEL descSel = find_selector(descriptorClass, "modelWithMILText:weights:optionsPlist:", failure);
    if (failure.failed()) return;
    id descriptor = ((DescriptorFactoryFn)objc_msgSend)(descriptorClass, descSel, mil, weights, nil);
    if (!descriptor)
        return failure.fail("the ANE framework rejected the MIL program (no descriptor); check the MIL dialect "
                            "(ANETRAIN_MIL_DIALECT) and the weight blob keys");
    Class modelClass = find_class(kModelClass, failure);
    if (failure.failed()) return;
    SEL modelSel = find_selector(modelClass, "inMemoryModelWithDescriptor:", failure);
    if (failure.failed()) return;
    model = ANE_RETAIN(((ModelFactoryFn)objc_msgSend)(modelClass, modelSel, descriptor));
    if (!model) return failure.fail("_ANEInMemoryModel creation returned nil");
    SEL hexSel = find_selector(model, "hexStringIdentifier", failure);
    if (failure.failed()) return;
    NSString* hex = ((StringGetterFn)objc_msgSend)(model, hexSel);
    if ([hex length] == 0) return failure.fail("_ANEInMemoryModel has no hexStringIdentifier");
    dir = utf8([NSTemporaryDirectory() stringByAppendingPathComponent:hex]);
}

// The compiler reads model.mil and weights/* from the model directory: write them first.
void Program::Impl::write_model_dir(const std::string& mil_text, const Blobs& blobs, Failure& failure) {
    if (failure.failed()) return;
    NSFileManager* fm = [NSFileManager defaultManager];
    NSString* weightsDir = [ns(dir) stringByAppendingPathComponent:@"weights"];
    if (![fm createDirectoryAtPath:weightsDir withIntermediateDirectories:YES attributes:nil error:nullptr])
        return failure.fail("cannot create the model directory " + dir);
    write_file(dir + "/model.mil", mil_text.data(), mil_text.size(), failure);
    for (const auto& [key, bytes] : blobs) {
        std::string path = model_file_path(dir, key, failure);
        if (failure.failed()) return;
        write_file(path, bytes.data(), bytes.size(), failure);
    }
}

void Program::Impl::compile(Failure& failure) {
    if (failure.failed()) return;
    SEL sel = find_selector(model, "compileWithQoS:options:error:", failure);
    if (failure.failed()) return;
    NSError* error = nil;
    ++g_compiles;  // a failed compile still consumes compiler resources
    auto t0 = std::chrono::steady_clock::now();
    BOOL ok = ((QosOptionsErrorFn)objc_msgSend)(model, sel, qos, @{}, &error);
    timings.compile_ms = ms_since(t0);
    if (!ok) failure.fail("ANE compile failed: " + describe(error));
}

void Program::Impl::load(Failure& failure) {
    if (failure.failed()) return;
    SEL sel = find_selector(model, "loadWithQoS:options:error:", failure);
    if (failure.failed()) return;
    auto t0 = std::chrono::steady_clock::now();
    NSError* error = nil;
    BOOL ok = ((QosOptionsErrorFn)objc_msgSend)(model, sel, qos, @{}, &error);
    if (!ok) {
        usleep(100 * 1000);  // the first load after compiling sometimes fails transiently
        error = nil;
        ok = ((QosOptionsErrorFn)objc_msgSend)(model, sel, qos, @{}, &error);
    }
    timings.load_ms = ms_since(t0);
    if (!ok) return failure.fail("ANE load failed (after one retry): " + describe(error));
    loaded = true;
}

void Program::Impl::unload() {
    if (!loaded) return;
    loaded = false;
    SEL sel = sel_registerName("unloadWithQoS:error:");
    if (![model respondsToSelector:sel]) return;
    NSError* error = nil;
    ((UnloadFn)objc_msgSend)(model, sel, qos, &error);  // nothing useful to do with a failure here
}

void Program::Impl::add_surfaces_up_to(size_t count, Failure& failure) {
    while (!failure.failed() && surfaces.size() < count) {
        IOSurfaceRef surface = create_surface(table.surface_alloc(surfaces.size()), failure);
        if (!surface) return;
        id wrapper = wrap_surface(surface, failure);
        if (!wrapper) {
            CFRelease(surface);
            return;
        }
        surfaces.push_back(surface);
        wrappers.push_back(ANE_RETAIN(wrapper));
    }
}

void Program::Impl::add_request(size_t slot, Failure& failure) {
    add_surfaces_up_to(table.surface_count(), failure);
    if (failure.failed()) return;
    NSMutableArray* inputs = [NSMutableArray array];
    for (size_t id_ : table.request_inputs(slot)) [inputs addObject:wrappers[id_]];
    NSMutableArray* outputs = [NSMutableArray array];
    for (size_t id_ : table.request_outputs()) [outputs addObject:wrappers[id_]];
    id request = make_request(inputs, outputs, nil, @0, failure);
    if (request) requests.push_back(ANE_RETAIN(request));
}

Program::Program(const std::string& mil_text, const Blobs& blobs, SurfaceTable table, unsigned qos)
    : impl_(std::make_unique<Impl>(std::move(table), qos)) {
    const PlatformStatus& status = platform_status();
    if (!status.available) throw BackendError("the ANE backend is unavailable: " + status.reason);
    Failure failure;
    @autoreleasepool {
        impl_->create_model(mil_text, blobs, failure);
    }
    failure.raise();
    // Listed in the registry before anything is written, so a crash from here on leaves nothing
    // the next process's sweep does not find. On any later failure impl_'s destructor removes it.
    // The identifier's form is the framework's, not documented: a directory we cannot vouch for
    // is used as it is but never deleted by us (said once per process), rather than failing.
    std::string problem = register_model_dir(temp_root(), impl_->dir);
    impl_->dir_registered = problem.empty();
    static std::atomic<bool> said{false};
    if (!problem.empty() && !said.exchange(true))
        std::fprintf(stderr, "anetrain: %s; it will not be cleaned up (please report, see docs/macos.md)\n",
                     problem.c_str());
    @autoreleasepool {
        impl_->write_model_dir(mil_text, blobs, failure);
        impl_->compile(failure);
        impl_->load(failure);
        if (!failure.failed()) impl_->add_request(0, failure);
    }
    failure.raise();
}

Program::~Program() = default;

const SurfaceTable& Program::table() const { return impl_->table; }

const ProgramTimings& Program::timings() const { return impl_->timings; }

const std::string& Program::model_dir() const { return impl_->dir; }

size_t Program::add_slot() {
    size_t slot = impl_->table.add_slot();
    Failure failure;
    @autoreleasepool {
        impl_->add_request(slot, failure);
    }
    failure.raise();
    return slot;
}

void Program::evaluate(size_t slot) {
    if (slot >= impl_->requests.size()) throw BackendError("slot " + std::to_string(slot) + " does not exist");
    Failure failure;
    @autoreleasepool {
        evaluate_on(impl_->model, impl_->qos, impl_->requests[slot], failure);
    }
    failure.raise();
}

Program::Mapping::Mapping(void* surface, bool read_only) : surface_(surface), base_(nullptr), read_only_(read_only) {
    IOSurfaceRef s = static_cast<IOSurfaceRef>(surface_);
    if (IOSurfaceLock(s, read_only_ ? kIOSurfaceLockReadOnly : 0, nullptr) != 0)
        throw BackendError("IOSurfaceLock failed");
    base_ = IOSurfaceGetBaseAddress(s);
}

Program::Mapping::~Mapping() {
    IOSurfaceUnlock(static_cast<IOSurfaceRef>(surface_), read_only_ ? kIOSurfaceLockReadOnly : 0, nullptr);
}

Program::Mapping Program::map(size_t surface_id, bool read_only) {
    if (surface_id >= impl_->surfaces.size())
        throw BackendError("surface " + std::to_string(surface_id) + " does not exist");
    return Mapping(impl_->surfaces[surface_id], read_only);
}

void Program::reload() {
    Failure failure;
    @autoreleasepool {
        impl_->unload();
        impl_->load(failure);
    }
    failure.raise();
}

void Program::overwrite_model_file(const std::string& relative_path, const std::string& bytes) {
    Failure failure;
    @autoreleasepool {
        std::string path = model_file_path(impl_->dir, kModelPathPrefix + relative_path, failure);
        if (!failure.failed()) write_file(path, bytes.data(), bytes.size(), failure);
    }
    failure.raise();
}

void Program::evaluate_variant(long procedure_index, const std::string& weights) {
    Failure failure;
    IOSurfaceRef weights_surface = nullptr;
    @autoreleasepool {
        if (!weights.empty()) {
            weights_surface = create_surface(surface_alloc_bytes(weights.size()), failure);
            if (weights_surface) {
                IOSurfaceLock(weights_surface, 0, nullptr);
                std::memcpy(IOSurfaceGetBaseAddress(weights_surface), weights.data(), weights.size());
                IOSurfaceUnlock(weights_surface, 0, nullptr);
            }
        }
        NSMutableArray* inputs = [NSMutableArray array];
        for (size_t id_ : impl_->table.request_inputs(0)) [inputs addObject:impl_->wrappers[id_]];
        NSMutableArray* outputs = [NSMutableArray array];
        for (size_t id_ : impl_->table.request_outputs()) [outputs addObject:impl_->wrappers[id_]];
        id weights_buffer = weights_surface ? wrap_surface(weights_surface, failure) : nil;
        id request = failure.failed() ? nil : make_request(inputs, outputs, weights_buffer, @(procedure_index), failure);
        if (request) evaluate_on(impl_->model, impl_->qos, request, failure);
    }
    if (weights_surface) CFRelease(weights_surface);
    failure.raise();
}

std::string Program::evaluate_with_perf_stats(unsigned mask) {
    std::string report;
    @autoreleasepool {
        id model = impl_->model;
        SEL setMask = sel_registerName("setPerfStatsMask:");
        if ([model respondsToSelector:setMask]) {
            ((SetMaskFn)objc_msgSend)(model, setMask, mask);
            report += "perfStatsMask set; ";
        } else {
            report += "model has no setPerfStatsMask:; ";
        }
    }
    evaluate(0);
    @autoreleasepool {
        id request = impl_->requests[0];
        SEL getter = sel_registerName("perfStats");
        if ([request respondsToSelector:getter]) {
            id stats = ((ObjectGetterFn)objc_msgSend)(request, getter);
            report += "request perfStats: " + (stats ? utf8([stats description]) : std::string("nil"));
        } else {
            report += "request has no perfStats getter";
        }
    }
    return report;
}

}  // namespace anetrain::backend::ane
