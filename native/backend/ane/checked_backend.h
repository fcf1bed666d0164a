// The ANE rule check in front of a backend (portable C++): a program that breaks the rules is
// refused with a BackendError listing the violations before the inner backend sees it, so a
// known-bad program never spends ANE compile budget. make_ane_backend puts it in front of the
// ANE; in front of the ref backend it lets Linux run exactly the refusals a Mac would make.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "backend/ane/rules.h"
#include "backend/backend.h"

namespace anetrain::backend::ane {

// as_compiled: the text `inner` will hand the compiler for a program (the ANE backend packs
// several inputs into one surface first); the rules judge that text. Unset: the program as given.
using AsCompiled = std::function<std::string(const mil::Program&, const std::string& mil_text)>;
std::shared_ptr<Backend> rule_checked(std::shared_ptr<Backend> inner, RuleSet rules, AsCompiled as_compiled = nullptr);

}  // namespace anetrain::backend::ane
