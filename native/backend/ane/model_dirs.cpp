#include "backend/ane/model_dirs.h"

#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

namespace anetrain::backend::ane {

namespace {

struct Registered {
    std::string root;  // normalised temp root the directory lives in
    int users = 0;
};

std::mutex g_mutex;
std::map<std::string, Registered> g_dirs;  // by absolute directory path

// "/tmp/" and "/tmp" name one root; keep the spelling without the trailing slash.
std::string normalised_root(const std::string& tmp_root) {
    std::string root = tmp_root;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    return root;
}

bool usable_root(const std::string& root) {
    return !root.empty() && root[0] == '/' && root.find("..") == std::string::npos;
}

bool is_hex_digit(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// The framework names model directories by a hex identifier; anything else is not ours to delete.
bool is_hex_id(const std::string& name) {
    bool digit = false;
    for (char c : name) {
        if (is_hex_digit(c))
            digit = true;
        else if (c != '_' && c != '-')
            return false;
    }
    return digit;
}

// True when `dir` is <root>/<hex id> exactly: a direct child, no "..", no other spelling.
bool is_model_dir_of(const std::string& root, const std::string& dir) {
    if (!usable_root(root) || dir.find("..") != std::string::npos) return false;
    const std::string prefix = root == "/" ? root : root + "/";
    if (dir.size() <= prefix.size() || dir.compare(0, prefix.size(), prefix) != 0) return false;
    const std::string name = dir.substr(prefix.size());
    return name.find('/') == std::string::npos && is_hex_id(name);
}

std::string registry_file_of(const std::string& root, long pid) {
    return (root == "/" ? root : root + "/") + kModelRegistryPrefix + std::to_string(pid) + ".txt";
}

// The pid named by "anetrain-models-<pid>.txt", or -1 for any other name.
long registry_pid(const std::string& name) {
    const std::string prefix = kModelRegistryPrefix, suffix = ".txt";
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        return -1;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.size() > 9) return -1;
    for (char c : digits)
        if (c < '0' || c > '9') return -1;
    long pid = std::stol(digits);
    return pid > 0 ? pid : -1;
}

bool process_gone(long pid) { return kill(pid_t(pid), 0) == -1 && errno == ESRCH; }

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return std::remove(path) == 0 ? 0 : -1; }

// Deletes a real directory and everything under it without following symbolic links (a link
// inside is removed, not its target). True when the directory existed and is gone now.
bool remove_tree(const std::string& dir) {
    struct stat st;
    if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
    nftw(dir.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    return lstat(dir.c_str(), &st) != 0;
}

// Rewrites this process's registry file for `root` from g_dirs (caller holds g_mutex): written
// aside and renamed so a crash never leaves a half-written list; no directories, no file.
bool write_registry(const std::string& root) {
    const std::string path = registry_file_of(root, long(getpid()));
    std::string text;
    for (const auto& [dir, entry] : g_dirs)
        if (entry.root == root) text += dir + "\n";
    if (text.empty()) return std::remove(path.c_str()) == 0 || errno == ENOENT;
    const std::string aside = path + ".tmp";
    {
        std::ofstream out(aside, std::ios::trunc);
        out << text;
        if (!out.flush()) return false;
    }
    return std::rename(aside.c_str(), path.c_str()) == 0;
}

std::vector<std::string> listed_dirs(const std::string& registry) {
    std::vector<std::string> dirs;
    std::ifstream in(registry);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) dirs.push_back(line);
    return dirs;
}

// Caller holds g_mutex.
bool drop(std::map<std::string, Registered>::iterator it) {
    const std::string dir = it->first, root = it->second.root;
    g_dirs.erase(it);
    remove_tree(dir);
    write_registry(root);  // best effort: a stale line only names a directory that is gone
    return true;
}

}  // namespace

std::string model_registry_file(const std::string& tmp_root) {
    return registry_file_of(normalised_root(tmp_root), long(getpid()));
}

std::string register_model_dir(const std::string& tmp_root, const std::string& dir) {
    const std::string root = normalised_root(tmp_root);
    if (!is_model_dir_of(root, dir)) return "model directory '" + dir + "' is not a hex-id directory directly under '" + root + "'";
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_dirs.find(dir);
    if (it != g_dirs.end()) {
        if (it->second.root != root) return "model directory '" + dir + "' is registered under '" + it->second.root + "'";
        ++it->second.users;
        return "";
    }
    g_dirs[dir] = Registered{root, 1};
    if (write_registry(root)) return "";
    g_dirs.erase(dir);
    return "cannot write the model directory registry " + registry_file_of(root, long(getpid())) +
           "; check free space and permissions of the temporary directory";
}

bool unregister_model_dir(const std::string& dir) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_dirs.find(dir);
    if (it == g_dirs.end()) return false;
    if (--it->second.users > 0) return false;
    return drop(it);
}

bool remove_model_dir(const std::string& dir) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_dirs.find(dir);
    if (it == g_dirs.end()) return false;
    return drop(it);
}

int model_dir_users(const std::string& dir) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_dirs.find(dir);
    return it == g_dirs.end() ? 0 : it->second.users;
}

std::vector<std::string> release_all() {
    std::lock_guard<std::mutex> lock(g_mutex);
    std::vector<std::string> removed;
    std::set<std::string> roots;
    for (const auto& [dir, entry] : g_dirs) {
        if (remove_tree(dir)) removed.push_back(dir);
        roots.insert(entry.root);
    }
    g_dirs.clear();
    for (const std::string& root : roots) {
        const std::string registry = registry_file_of(root, long(getpid()));
        if (std::remove(registry.c_str()) == 0) removed.push_back(registry);
    }
    return removed;
}

std::vector<std::string> sweep_stale(const std::string& tmp_root) {
    const std::string root = normalised_root(tmp_root);
    std::vector<std::string> removed;
    if (!usable_root(root)) return removed;
    DIR* d = opendir(root.c_str());
    if (!d) return removed;
    std::vector<std::string> dead_registries;
    std::set<std::string> live;  // listed by a process still running: never removed
    const long self = long(getpid());
    while (dirent* e = readdir(d)) {
        long pid = registry_pid(e->d_name);
        if (pid < 0) continue;
        const std::string registry = registry_file_of(root, pid);
        if (pid != self && process_gone(pid)) {
            dead_registries.push_back(registry);
        } else {
            for (const std::string& dir : listed_dirs(registry)) live.insert(dir);
        }
    }
    closedir(d);
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        for (const auto& entry : g_dirs) live.insert(entry.first);
    }
    for (const std::string& registry : dead_registries) {
        for (const std::string& dir : listed_dirs(registry))
            if (is_model_dir_of(root, dir) && !live.count(dir) && remove_tree(dir)) removed.push_back(dir);
        if (std::remove(registry.c_str()) == 0) removed.push_back(registry);
    }
    return removed;
}

}  // namespace anetrain::backend::ane
