// masked_conv2d CPU kernels (TODO, issue 4)
