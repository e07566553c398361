// Sharded checkpoints: every rank writes the parameter slices it owns (fp32 master weights and AdamW
// moments) to its own HDF5 files (checkpoint.writers of them, written in parallel), each dataset tagged with the logical full shape and the slice offset; a
// manifest with a checksum per file and a completion marker are written last, and the directory is renamed
// into place only when complete, so a crash at any moment leaves the previous checkpoint whole. Loading reads,
// for each local slice, the hyperslabs of whichever files hold it, so a checkpoint loads into any layout.
// With checkpoint.async a save only snapshots the state to host memory; a background thread writes the shard and
// the next collective call (the next save, the end of training, a signal) completes it.
#pragma once
#include <cstdint>
#include <climits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "model/parallel.h"

namespace monta::model {

struct CkptMeta {
  int64_t step = 0, consecutive_skips = 0;
  uint64_t loader_seed = 0;
  int64_t loader_epoch = 0, loader_sample = 0;
  int world = 1, tp = 1, ep = 1;
  bool expert_tp = true;
  int writers = 1;        // files per rank (checkpoint.writers of the run that saved it)
  std::string signature;  // model shape; a checkpoint loads only into the same model
};

// How a rank writes its shard: `writers` files, each written by its own thread (the rank's datasets spread over
// them by bytes), with O_DIRECT for the page-aligned bulk when `direct` (else through the page cache).
struct CkptWriteOptions {
  int writers = 1;
  bool direct = true;
};

// "vocab=..,hidden=..,...": the parts of the config a checkpoint must agree with.
std::string model_signature(const ModelConfig& m);

// Collective over par.world. Writes <run_dir>/checkpoints/step_<N> (N = meta.step) and keeps the newest `keep`.
// Returns the checkpoint directory. An unwritable run directory or a full disk is a user error naming the path.
// (A synchronous CkptSaver: save, then finalize.)
std::string ckpt_save(const std::string& run_dir, const ParamStore& params, const ParallelContext& par,
                      const CkptMeta& meta, const std::string& config_ini, int64_t keep);

// Saves with at most one save in flight. save() is collective over par.world: it first finalizes the save in
// flight (waiting for its writer; the log says so and for how long), then has rank 0 create step_N.tmp, copies this
// rank's owned state (master weights, both moments) into a host snapshot and lays out the shard's HDF5 files (io.writers
// of them); that is the training pause. Async: background threads then write the files' data (large writes, O_DIRECT
// for the aligned bulk, each file checksummed from memory on a thread beside its writer, fsync, rename) while training
// goes on; they never communicate. Sync: the same writes, waited for, then finalize. finalize() is collective: it waits
// for this rank's writers, then gathers the checksums; rank 0 writes the manifest and COMPLETE and renames step_N.tmp into place; a
// barrier. Until then a crash leaves the previous checkpoint the newest complete one. par's communicator must outlive
// the save in flight; a writer's error (disk full) is raised as a user error by finalize.
class CkptSaver {
 public:
  explicit CkptSaver(bool async, CkptWriteOptions io = {});
  ~CkptSaver();  // waits for the writer, no collective: an unfinalized save stays step_N.tmp (never loaded)
  CkptSaver(const CkptSaver&) = delete;
  CkptSaver& operator=(const CkptSaver&) = delete;
  void save(const std::string& run_dir, const ParamStore& params, const ParallelContext& par, const CkptMeta& meta,
            const std::string& config_ini, int64_t keep);
  // The directory of the save it completed, "" when none was in flight. `waiter` names what waits, for the log.
  std::string finalize(const std::string& waiter = "");
  bool in_flight() const;
  // Allocates the snapshot for `params` now (pinned host memory takes seconds to allocate at 70B scale; done at
  // start-up it is not part of the first save's pause). Logged as an arena.
  void reserve(const ParamStore& params);
  // Bytes of the snapshot allocated so far (model::checkpoint_host_bytes of the params it was reserved for; 0 before).
  int64_t snapshot_bytes() const;

 private:
  struct State;
  bool async_;
  CkptWriteOptions io_;
  std::unique_ptr<State> s_;
};
// Newest complete and intact checkpoint under <run_dir>/checkpoints ("" if none); incomplete or corrupt ones
// are skipped with a warning. Never fails.
std::string ckpt_find_latest(const std::string& run_dir);
// What `monta train` starts from, decided before anything is written: "" (a fresh start) or a checkpoint
// directory whose files are intact and (with a non-empty signature) of that model. resume is
// checkpoint.resume: "" (fresh), "auto" or a directory. User errors, unless `overwrite`:
//   fresh start while <run_dir>/checkpoints holds checkpoints (naming the newest and the two ways on);
//   "auto" while checkpoints exist but none is usable (a fresh start only when there are none at all).
//   an explicit directory of this run directory older than its newest complete checkpoint (the first save
//   would remove the newer ones).
// Always a user error: <run_dir>/checkpoints not a directory; an explicit directory that is not usable or (with
// a non-empty signature) of another model.
// `meta` (if given) receives the chosen checkpoint's metadata.
// checksums = false checks everything but the files' checksums (for a load that verifies while it reads:
// ckpt_load_verified); `below` leaves the checkpoints of that step and newer out of "auto" (those such a load refused).
std::string ckpt_resolve_resume(const std::string& run_dir, const std::string& resume, bool overwrite,
                                const std::string& signature = "", CkptMeta* meta = nullptr, bool checksums = true,
                                int64_t below = INT64_MAX);
// The verdict on one checkpoint: nullopt when it is complete, intact (manifest checksum, every file's size and
// checksum) and of the model `signature` ("" skips that check); else one sentence naming the directory and
// the reason. Never ends the process.
std::optional<std::string> ckpt_problem(const std::string& dir, const std::string& signature);
// ckpt_problem(dir, "") as a user error.
void ckpt_check_intact(const std::string& dir);
// Reads and checks a checkpoint's manifest (user error naming the file and the reason when it is not usable).
CkptMeta ckpt_read_meta(const std::string& dir);
// ckpt_problem(dir, signature) as a user error, then the metadata. Touches nothing; `train` calls it before
// writing anything.
CkptMeta ckpt_check(const std::string& dir, const std::string& signature);
// When a load checks the files' checksums.
enum class CkptVerify {
  before,         // ckpt_check first (a pass over every file), then the load: reads the checkpoint twice
  while_loading,  // ckpt_load_verified: each byte read once
  none,           // the caller has just checked
};
// Loads every local slice (any source layout); returns the metadata. A problem is a user error. With while_loading it
// is collective over `world` (nullptr: this process alone).
CkptMeta ckpt_load(const std::string& dir, ParamStore& params, const std::string& signature,
                   CkptVerify verify = CkptVerify::before, comm::Communicator* world = nullptr);
// Checks the manifest, sizes and signature, then loads, checking every file's checksum as it is read: each file is
// streamed whole, start to end, by one rank (the rank that saved it, modulo world's size), its own slices read straight
// into place, so a same-layout resume reads each byte of the checkpoint once; slices from other files (replicas,
// resharding) are read by hyperslabs. Collective over `world` (nullptr: this process alone): every rank returns the
// same verdict, nullopt (loaded; `meta` filled) or one sentence naming the checkpoint and the file. After a problem
// the parameters hold partial data: load another checkpoint or stop. Never ends the process for a bad checkpoint.
std::optional<std::string> ckpt_load_verified(const std::string& dir, ParamStore& params, const std::string& signature,
                                              comm::Communicator* world, CkptMeta* meta = nullptr);
// Writes one HDF5 file of full logical tensors named like the model's parameters (single process), through a
// temporary file renamed into place. Refuses (user error) an out_path inside a checkpoint directory, onto a
// file of the checkpoint, or over an existing file unless `force`.
void ckpt_export(const std::string& dir, const std::string& out_path, bool force = false);
// The checkpoint directory that `path` lies in ("" if none): an ancestor holding COMPLETE or manifest.txt, or
// named checkpoints/step_*. Outputs of export and prepare-data must not land there.
std::string ckpt_dir_containing(const std::string& path);

}  // namespace monta::model
