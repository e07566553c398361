// The fatal-error path of check.h: one handler, rank/host identity, and the abort hook comm installs.
#include "engine/check.h"

#include <cstdio>
#include <cstdlib>

namespace monta::engine {
namespace {

int g_rank = 0, g_world = 1;
std::string g_host;
AbortHook g_abort = nullptr;

void default_handler(const Error& e) {
  std::string who = g_world > 1 ? "[rank " + std::to_string(g_rank) + (g_host.empty() ? "" : " " + g_host) + "] " : "";
  std::fprintf(stderr, "monta: error: %s%s\n", who.c_str(), e.what());
  std::fflush(stderr);
  int code = e.user ? 2 : 1;
  if (g_abort) g_abort(code);
  std::exit(code);
}

void throwing_handler(const Error& e) { throw e; }

FatalHandler g_handler = default_handler;

}  // namespace

void set_fatal_handler(FatalHandler h) { g_handler = h ? h : default_handler; }
void install_throwing_handler() { g_handler = throwing_handler; }
void set_abort_hook(AbortHook h) { g_abort = h; }
void set_error_identity(int rank, int world, const std::string& host) {
  g_rank = rank;
  g_world = world;
  g_host = host;
}

void fail(const Error& e) {
  g_handler(e);
  std::abort();  // a handler that returns is a bug
}

void fail_check(const char* lib, const char* stmt, const std::string& msg, const char* file, int line) {
  fail(Error(std::string(lib) + " check failed: " + stmt + ": " + msg + " (" + file + ":" + std::to_string(line) + ")",
             false));
}

void fail_user(const std::string& msg) { fail(Error(msg, true)); }

}  // namespace monta::engine
