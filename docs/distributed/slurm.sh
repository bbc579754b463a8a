#!/bin/bash
# Slurm: synchronous training on several nodes, one task per node.
#   sbatch docs/distributed/slurm.sh
# Each task builds TF_CONFIG from the Slurm variables (every node of the job
# in cluster.worker, SLURM_PROCID as task.index) and runs train.py; task 0 is
# the chief and writes the checkpoints into train.log_dir, which must be on a
# filesystem all nodes see. Resubmitting the job resumes from the chief's
# newest checkpoint. The tasks talk gRPC on PORT without authentication: run
# on the cluster's private network only.
#SBATCH --job-name=fcn8s
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00

set -euo pipefail
PORT=${PORT:-2222}
CONFIG=${CONFIG:-config.json}

srun --kill-on-bad-exit=1 bash -c '
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  workers=$(printf "\"%s:'"$PORT"'\"," $hosts)
  export TF_CONFIG="{\"cluster\": {\"worker\": [${workers%,}]}, \"task\": {\"type\": \"worker\", \"index\": $SLURM_PROCID}}"
  exec python train.py --config '"$CONFIG"'
'
