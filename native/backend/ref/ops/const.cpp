// const: a literal (inline or BLOBFILE) loaded once at compile time.
#include "backend/ref/plan.h"

namespace anetrain::backend::ref {

static void build_const(Builder& b) {
    const mil::Arg* val = b.op().operand("val");
    if (val && val->kind != mil::Arg::Kind::Literal) b.fail("val must be a literal such as fp16(0.5) or tensor<...>(BLOBFILE(...))");
    Value v = b.value("val");
    b.output_value(0, v);
}

void register_const_ops(std::map<std::string, BuildFn>& r) { r["const"] = build_const; }

}  // namespace anetrain::backend::ref
