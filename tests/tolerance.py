"""How closely two computations of the same probabilities agree, by the device that made them.

Tests that compare a server's answers (which run on CUDA when torch sees it: ``--device
auto``) with a CPU computation, or a text alone with the same text in a batch, use
:data:`SERVED_ATOL`.
"""

from __future__ import annotations

import torch

# On CPU a row's result does not depend on the batch around it, to float32 rounding.
CPU_ATOL = 1e-6
# cuDNN chooses GRU kernels by batch shape and sums in another order than the CPU: on an H200
# (scripts/device_check.sh) a headline alone and in a batch differed by up to 5e-6, and CUDA
# and CPU by up to 6e-5. Labels agreed on all 2,048 titles compared.
CUDA_ATOL = 1e-4
SERVED_ATOL = CUDA_ATOL if torch.cuda.is_available() else CPU_ATOL
# Where a server started with the default ``--device auto`` runs its model.
SERVED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
