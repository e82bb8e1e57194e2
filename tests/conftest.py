import pytest
import torch

import cldfast

HAS_CUDA = torch.cuda.is_available() and cldfast.build_info()["cuda"]
CUDA_SKIP_REASON = ("needs a CUDA GPU and a cldfast build with CUDA kernels "
                    f"(torch.cuda.is_available()={torch.cuda.is_available()}, "
                    f"build cuda={cldfast.build_info()['cuda']})")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, requires_cuda]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
