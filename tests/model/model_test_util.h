// Shared by the single-process model tests: the tiny model they train (hidden 32, seq 32, batch 8; a few ms a step on
// one core).
#pragma once
#include "model/config.h"

namespace monta::testing_model {

inline model::Config tiny_test_config() {
  model::Config c;  // the defaults are the tiny config's model
  c.model.vocab = 64;
  c.model.hidden = 32;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 64;
  c.model.seq_len = 32;
  c.train.micro_batch = 4;
  c.train.global_batch = 8;
  c.train.lr = 1e-2;
  c.train.min_lr = 1e-3;
  c.train.warmup_steps = 10;
  return c;
}

}  // namespace monta::testing_model
