// The ANE rule checker (portable C++, runs in CI on Linux): does a MIL program have the shape of
// the programs known to train on the ANE (shared reference ane-facts.md 2.9)? Every rule is
// stated, with its source and how it may be relaxed, in docs/ane-rules.md.
//
// The rules are deliberately narrower than what the ANE compiler may accept: they describe what
// is known to work, so a program that passes is one the ANE has been seen to run in training.
// A rule is widened only by a probe a Mac user runs and reports (scripts/probe.py).
#pragma once
#include <set>
#include <string>
#include <vector>

namespace anetrain::backend::ane {

struct RuleSet {
    std::string family;                 // "M1".."M5"; "" = any chip (the strictest rules)
    bool multi_io = false;              // several inputs/outputs allowed (a probe said so)
    std::set<std::string> ops;          // op types allowed
    std::vector<std::string> dialects;  // mil::Dialect::str() spellings, in the order to try them
};

// The chip families the table knows, in order.
std::vector<std::string> rule_families();

// The rules for one chip family, or for "" = any chip (the intersection of every family's ops
// and dialects). Throws std::invalid_argument for a family the table does not know.
RuleSet rules_for(const std::string& chip_family, bool multi_io = false);

// One line per violation, empty when `mil_text` conforms to `rules`. Each line reads
// "line N: <rule id>: <what is wrong>" ("<rule id>: ..." when no line applies); a text that
// does not parse gives the single line "parse: <MilError message>".
// Rule ids: function, io-count, io-shape, io-row, rank, op, dialect, literal.
std::vector<std::string> check_program(const std::string& mil_text, const RuleSet& rules);

}  // namespace anetrain::backend::ane
