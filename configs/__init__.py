"""Experiment configs: one file per experiment, `get_config(arg)` returning a ConfigDict.

The sections below are the same in every experiment; the two base configs
(`clip_small`, `resnet18_shapes`) take them from here.
"""

# Device mesh axes (see jaxmm/sharding.py); -1 means every remaining device.
MESH = dict(data=-1, fsdp=1, model=1)

# Multi-process runs (README "Multi-host"). Empty values are found by JAX on Cloud TPU,
# SLURM, Open MPI and GKE, or read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID.
DISTRIBUTED = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1)
