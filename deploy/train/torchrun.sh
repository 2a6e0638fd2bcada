#!/usr/bin/env bash
# Multi-GPU / multi-node fine-tuning with torchrun, on machines you log into (no Kubernetes).
# The same config file and overrides as a local `clipserve train` run; run this on every node:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 deploy/train/torchrun.sh configs/tiny-synth.toml run.output_dir=/shared/runs/v2
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 deploy/train/torchrun.sh configs/tiny-synth.toml run.output_dir=/shared/runs/v2
#
# One machine, all its GPUs: deploy/train/torchrun.sh configs/tiny-synth.toml
# CPU smoke test of the launch (gloo): GPUS_PER_NODE=2 deploy/train/torchrun.sh CONFIG run.device=cpu
#
# run.output_dir must be on storage every node sees (rank 0 writes checkpoints; a rerun resumes).
# data.batch_size is the GLOBAL batch (each process takes its shard); features are
# all-gathered across every process, so the contrastive loss sees the whole global batch as
# negatives (loss.gather_with_grad / loss.local_loss as in open_clip). Mine hard negatives
# first, as its own step (`clipserve mine`, one process), and point the config at its output.
set -euo pipefail
CONFIG=${1:?usage: torchrun.sh CONFIG [section.key=value ...]}
shift
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per process; torchrun would otherwise pick 1
exec torchrun \
    --nnodes="$NNODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    --node-rank="$NODE_RANK" \
    --master-addr="$MASTER_ADDR" \
    --master-port="$MASTER_PORT" \
    --max-restarts="${MAX_RESTARTS:-0}" \
    --no-python clipserve train --config "$CONFIG" "$@"
