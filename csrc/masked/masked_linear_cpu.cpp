// masked_linear CPU kernels (TODO, issue 4)
