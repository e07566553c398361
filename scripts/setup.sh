#!/usr/bin/env bash
# Installs the Debian packages monta builds against and its tests use (idempotent; apt-get update first) and
# reports what is missing that apt cannot provide (the CUDA toolkit: without it monta builds its CPU backend only).
set -euo pipefail
# slurmctld slurmd slurm-client munge: the one-host Slurm of the Slurm tests (scripts/slurm_local.sh).
PKGS=(build-essential cmake ninja-build libopenmpi-dev openmpi-bin libhdf5-dev libboost-program-options-dev
      libgtest-dev python3 python3-matplotlib slurmctld slurmd slurm-client munge)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found ($(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -n 2 | head -n 1 || nvcc --version | tail -n 2 | head -n 1))"
else
  echo "setup: no CUDA toolkit (nvcc) found: building the CPU backend only. Install CUDA 13 under /usr/local/cuda for the GPU path."
fi
