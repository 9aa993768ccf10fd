#!/bin/bash -x
#PJM -N kit-gpt-1.3b-boost
#PJM -L "node=1"
#PJM -L "rscunit=rscunit_ft01,rscgrp=small"
#PJM -L "elapse=01:00:00"
#PJM -L "freq=2200,retention_state=1,eco_state=0,throttling_state=0,issue_state=0,ex_pipe_state=0"
#PJM --mpi "proc=1"
#PJM --mpi "max-proc-per-node=1"
#PJM -g hp190122
#PJM -x GLOO_SOCKET_IFNAME=tofu1
#PJM -x OMP_NUM_THREADS=48
#PJM -x PJM_LLIO_GFSCACHE=/vol0003:/vol0004
#PJM -j
#PJM -S
#PJM -o /vol0004/hp190122/u01234/results/20230215-000000_row/logs/pjm.%j.out
#PJM --spath /vol0004/hp190122/u01234/results/20230215-000000_row/logs/pjm.%j.stats

# Written by kit for bundle 20230215-000000_row: recipe gpt-1.3b, preset boost,
# DP 1 x TP 1 x PP 1 = 1 rank(s), 1 per node on 1 node(s), 48 thread(s) per rank.
# setting freq_mhz=2200, retention_state=1, eco_state=0, throttling_state=0, issue_state=0, ex_pipe_state=0: #PJM -L "freq=2200,retention_state=1,eco_state=0,throttling_state=0,issue_state=0,ex_pipe_state=0"
# setting allocator=glibc: default allocator
# setting ranks_per_node=1: #PJM --mpi "max-proc-per-node=1"
# setting threads_per_rank=48: OMP_NUM_THREADS=48
# kit job-run starts the ranks with Fujitsu MPI, one output file per rank:
#   mpiexec -np 1 -std-proc /vol0004/hp190122/u01234/results/20230215-000000_row/logs/stdproc/%j/%m/%/1000r/out \
#     -x GLOO_SOCKET_IFNAME -x OMP_NUM_THREADS -x KIT_RUN_ID -x PYTHONUNBUFFERED -x KIT_WORLD_SIZE=1 \
#     -x KIT_RANKS_PER_NODE=1 -x 'MASTER_ADDR=<tofu1 address of the master node>' -x 'MASTER_PORT=<free port>' /vol0004/hp190122/u01234/venv-aarch64/bin/python3 \
#     -m kit.rankexec -- /vol0004/hp190122/u01234/venv-aarch64/bin/python3 -m kit.workload \
#     --layers 24 --hidden 2048 --heads 32 --seq 1024 --vocab 50257 --micro-batch 1 \
#     --global-batch 1024 --tp 1 --pp 1 --zero 1 --iters 3 --warmup-iters 1 --seed 1234 --lr 0.0002 \
#     --dtype fp32 --data synthetic --checkpoint-activations
# then watches every rank, checks the frequency it sees against the one requested above,
# and writes the bundle (job id, node list, PJM_* variables, this script), whatever happens.

cd /home/u01234/work
/vol0004/hp190122/u01234/venv-aarch64/bin/python3 -m kit job-run /vol0004/hp190122/u01234/results/20230215-000000_row
