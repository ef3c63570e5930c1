"""Set-up and the machine: the venv and Jittor (setup.sh), launching MPI ranks, the CUDA route, the compile check
without a GPU, the GPU check, the browser for the studio test."""
