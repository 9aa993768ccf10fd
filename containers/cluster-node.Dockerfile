# A node of the CI's multi-node Slurm cluster (.ci/cluster.sh): the kit's own x86_64 image
# (Debian 12, Python 3.11, tcmalloc, procps) plus what a Slurm compute node runs: slurmd
# (slurmctld for the controller container), munge, and OpenMPI's orted for `mpirun` across
# nodes. Nothing of the kit is added here: the nodes run the checkout's kit and Python from
# bind mounts at the host's paths, as compute nodes do from a shared filesystem.
#
#   podman build --build-arg KIT_IMAGE=localhost/kit:x86_64-tcmalloc -f containers/cluster-node.Dockerfile containers/
ARG KIT_IMAGE=localhost/kit:x86_64-tcmalloc
FROM ${KIT_IMAGE}
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update \
 && apt-get install -y --no-install-recommends slurmd slurmctld slurm-client munge openmpi-bin \
 && rm -rf /var/lib/apt/lists/*
LABEL org.kit.cluster.node="slurmd slurmctld munge openmpi-bin"
