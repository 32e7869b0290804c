// masked_linear CUDA kernels (TODO, issue 4)
