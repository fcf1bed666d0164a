// The ANE framework's model directories and our registry of them (portable C++, tested on Linux).
//
// The framework decides where a compiled program lives: <temp root>/<hexStringIdentifier>, a
// name we cannot choose, shared by identical programs, and left behind when a process crashes.
// To tell our directories from anything else in the temp root, each process keeps a registry
// file <temp root>/anetrain-models-<pid>.txt listing the directories it created, one absolute
// path a line, kept current as directories come and go. A later process removes what a dead
// process listed (sweep_stale), and nothing else.
//
// A model directory is always a direct child of its temp root named by a hex id (hex digits,
// possibly grouped by '_' or '-'); no function here deletes any other path.
#pragma once
#include <string>
#include <vector>

namespace anetrain::backend::ane {

constexpr const char* kModelRegistryPrefix = "anetrain-models-";

// <tmp_root>/anetrain-models-<pid>.txt of this process.
std::string model_registry_file(const std::string& tmp_root);

// One more program uses `dir` (identical programs share one). The first user adds it to this
// process's registry file before anything is written into it. Returns "" on success, else why
// not (nothing registered): `dir` is not a hex-id child of `tmp_root`, is registered under
// another root, or the registry file cannot be written. A message rather than an exception, so
// the Objective-C++ runtime can raise it outside its autorelease pools without catching.
std::string register_model_dir(const std::string& tmp_root, const std::string& dir);

// One user fewer; the last one removes the directory and its registry line. True when removed.
bool unregister_model_dir(const std::string& dir);

// Removes a registered directory now, whatever its user count, and its registry line. False
// (and nothing touched) for a path this process did not register.
bool remove_model_dir(const std::string& dir);

// How many programs of this process use `dir` (0 when not registered).
int model_dir_users(const std::string& dir);

// Removes every directory this process registered and its registry files (before an exec()
// restart, whose new process image would otherwise leave them behind). Returns what it removed.
std::vector<std::string> release_all();

// For every registry file in `tmp_root` whose process is gone, removes the directories it lists
// (only hex-id children of tmp_root that no live process lists) and then the file. Returns the
// removed paths, directories and files alike.
std::vector<std::string> sweep_stale(const std::string& tmp_root);

}  // namespace anetrain::backend::ane
