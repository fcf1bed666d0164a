// The ANE rule check in front of a backend (portable C++): a program that breaks the rules is
// refused with a BackendError listing the violations before the inner backend sees it, so a
// known-bad program never spends ANE compile budget. make_ane_backend puts it in front of the
// ANE; in front of the ref backend it lets Linux run exactly the refusals a Mac would make.
#pragma once
#include <memory>

#include "backend/ane/rules.h"
#include "backend/backend.h"

namespace anetrain::backend::ane {

std::shared_ptr<Backend> rule_checked(std::shared_ptr<Backend> inner, RuleSet rules);

}  // namespace anetrain::backend::ane
