// The one error path: every failed check, library call or user mistake ends in fail(), which hands an
// Error to the installed handler (default: print one message and abort the whole job; tests: throw).
#pragma once
#include <stdexcept>
#include <string>

namespace monta::engine {

struct Error : std::runtime_error {
  bool user;  // a user mistake (config, data, paths): a plain sentence, no file:line
  Error(const std::string& what, bool is_user) : std::runtime_error(what), user(is_user) {}
};

using FatalHandler = void (*)(const Error&);
using AbortHook = void (*)(int exit_code);

// Default handler: prints the message (rank and host prefixed) to stderr and calls the abort hook.
void set_fatal_handler(FatalHandler h);
void install_throwing_handler();  // for tests and callers that want exceptions
// comm registers MPI_Abort/ncclCommAbort here so no rank is left waiting in a collective.
void set_abort_hook(AbortHook h);
void set_error_identity(int rank, int world, const std::string& host);

[[noreturn]] void fail(const Error& e);
[[noreturn]] void fail_check(const char* lib, const char* stmt, const std::string& msg, const char* file, int line);
[[noreturn]] void fail_user(const std::string& msg);

}  // namespace monta::engine

#define MONTA_CHECK(cond, msg)                                                                   \
  do {                                                                                           \
    if (!(cond)) ::monta::engine::fail_check("monta", #cond, (msg), __FILE__, __LINE__);         \
  } while (0)
// A user mistake: one plain sentence with a hint, non-zero exit.
#define MONTA_USER_CHECK(cond, msg)                   \
  do {                                                \
    if (!(cond)) ::monta::engine::fail_user((msg));   \
  } while (0)

#define CUDA_CHECK(stmt)                                                                                  \
  do {                                                                                                    \
    auto monta_s_ = (stmt);                                                                               \
    if (monta_s_ != cudaSuccess)                                                                          \
      ::monta::engine::fail_check("CUDA", #stmt, cudaGetErrorString(monta_s_), __FILE__, __LINE__);      \
  } while (0)
#define CUBLAS_CHECK(stmt)                                                                                \
  do {                                                                                                    \
    auto monta_s_ = (stmt);                                                                               \
    if (monta_s_ != CUBLAS_STATUS_SUCCESS)                                                                \
      ::monta::engine::fail_check("cuBLAS", #stmt, cublasGetStatusString(monta_s_), __FILE__, __LINE__); \
  } while (0)
#define CUDNN_CHECK(stmt)                                                                                 \
  do {                                                                                                    \
    auto monta_s_ = (stmt);                                                                               \
    if (monta_s_ != CUDNN_STATUS_SUCCESS)                                                                 \
      ::monta::engine::fail_check("cuDNN", #stmt, cudnnGetErrorString(monta_s_), __FILE__, __LINE__);    \
  } while (0)
#define NCCL_CHECK(stmt)                                                                                  \
  do {                                                                                                    \
    auto monta_s_ = (stmt);                                                                               \
    if (monta_s_ != ncclSuccess)                                                                          \
      ::monta::engine::fail_check("NCCL", #stmt, ncclGetErrorString(monta_s_), __FILE__, __LINE__);      \
  } while (0)
#define MPI_CHECK(stmt)                                                                           \
  do {                                                                                            \
    int monta_s_ = (stmt);                                                                        \
    if (monta_s_ != MPI_SUCCESS) {                                                                \
      char monta_m_[MPI_MAX_ERROR_STRING];                                                        \
      int monta_l_ = 0;                                                                           \
      MPI_Error_string(monta_s_, monta_m_, &monta_l_);                                            \
      ::monta::engine::fail_check("MPI", #stmt, std::string(monta_m_, size_t(monta_l_)), __FILE__, __LINE__); \
    }                                                                                             \
  } while (0)
#define HDF5_CHECK(stmt)                                                                                  \
  do {                                                                                                    \
    if ((stmt) < 0) ::monta::engine::fail_check("HDF5", #stmt, "call returned an error", __FILE__, __LINE__); \
  } while (0)
