// masked_conv2d CUDA kernels (TODO, issue 4)
