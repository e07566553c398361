// `monta bench checkpoint`: a config's whole parameter state saved and loaded on this machine (same layout, and
// resharded into rank 0 of another TP size), next to a raw sequential write and read of the same bytes in the same
// directory and run (the disk's ceiling), in GB/s, with the training pause a save costs. Collective over the world.
#pragma once
#include <string>

#include "model/config.h"

namespace monta::model {

// Writes and removes files under `dir` (created; it must be absent or empty). `config_name` labels the output;
// `json` (rank 0; "" for none) receives the rows.
void bench_checkpoint(const Config& c, const std::string& config_name, const std::string& config_ini, std::string dir,
                      const std::string& json);

}  // namespace monta::model
