import pytest

from distgan.slurm import launch_plan


def hosts(nodelist):
    table = {"gpu[01-04]": ["gpu01", "gpu02", "gpu03", "gpu04"], "gpu07": ["gpu07"], "cpu[3,5]": ["cpu3", "cpu5"]}
    return table[nodelist]


@pytest.mark.parametrize(
    "env, expect",
    [
        # 1 node x 8 GPUs
        (
            {
                "SLURM_JOB_ID": "1234",
                "SLURM_JOB_NODELIST": "gpu07",
                "SLURM_NNODES": "1",
                "SLURM_NODEID": "0",
                "SLURM_GPUS_ON_NODE": "8",
            },
            {
                "NNODES": 1,
                "NODE_RANK": 0,
                "MAIN_ADDR": "gpu07",
                "MAIN_PORT": 21234,
                "NPROC_PER_NODE": 8,
                "NUM_PROCESSES": 8,
                "USE_CPU": 0,
            },
        ),
        # 4 nodes x 8 GPUs, third node, GPUs given as type:count
        (
            {
                "SLURM_JOB_ID": "98765",
                "SLURM_JOB_NODELIST": "gpu[01-04]",
                "SLURM_NNODES": "4",
                "SLURM_NODEID": "2",
                "SLURM_GPUS_PER_NODE": "a100:8",
            },
            {
                "NNODES": 4,
                "NODE_RANK": 2,
                "MAIN_ADDR": "gpu01",
                "MAIN_PORT": 38765,
                "NPROC_PER_NODE": 8,
                "NUM_PROCESSES": 32,
                "USE_CPU": 0,
            },
        ),
        # CPU only, 2 nodes, default 2 processes per node
        (
            {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "cpu[3,5]", "SLURM_NNODES": "2", "SLURM_NODEID": "1"},
            {
                "NNODES": 2,
                "NODE_RANK": 1,
                "MAIN_ADDR": "cpu3",
                "MAIN_PORT": 20007,
                "NPROC_PER_NODE": 2,
                "NUM_PROCESSES": 4,
                "USE_CPU": 1,
            },
        ),
        # CPU only with DISTGAN_NPROC
        (
            {"SLURM_JOB_ID": "40000", "SLURM_JOB_NODELIST": "gpu07", "SLURM_NNODES": "1", "DISTGAN_NPROC": "3"},
            {
                "NNODES": 1,
                "NODE_RANK": 0,
                "MAIN_ADDR": "gpu07",
                "MAIN_PORT": 20000,
                "NPROC_PER_NODE": 3,
                "NUM_PROCESSES": 3,
                "USE_CPU": 1,
            },
        ),
    ],
)
def test_launch_plan_table(env, expect):
    assert launch_plan(env, hosts) == expect


def test_outside_slurm_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not inside a SLURM job"):
        launch_plan({}, hosts)
