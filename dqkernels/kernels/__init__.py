"""Backend implementations: one package per op family (``<family>/``), holding one module
per backend (``torch.py``, ``cpp.py``, ``cuda.py``, ``triton.py``) and, in its
``__init__.py``, the declarations of what each backend's kernels run on
(:mod:`dqkernels.kernels.registry`). Helpers shared by families: ``_cext`` (tensors to
``dqkernels._C``), ``_layout`` and ``_coupling_c`` (the coupling kernels' views and calls)."""
