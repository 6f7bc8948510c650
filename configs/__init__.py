"""Experiment configs: one file per experiment, `get_config(arg)` returning a ConfigDict.

The sections below are the same in every experiment; the two base configs
(`clip_small`, `resnet18_shapes`) take them from here.
"""

# Device mesh axes (see jaxmm/sharding.py); -1 means every remaining device.
MESH = dict(data=-1, fsdp=1, model=1)
# Changes to jaxmm.sharding.DEFAULT_RULES, which map the models' logical axis names onto the
# mesh: (logical name, mesh axes or None) pairs, e.g. (("embed", None),) keeps parameters
# whole on the fsdp axis.
MESH_RULES = ()

# Multi-process runs (README "Multi-host"). Empty values are found by JAX on Cloud TPU,
# SLURM, Open MPI and GKE, or read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID.
DISTRIBUTED = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1)
