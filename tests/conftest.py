"""tests/ mirrors the package (tests/core, tests/data, ...); the shared helpers
(numpy_reference.py: the independent numpy CLD; dist_helpers.py: Gloo process groups) live
here, on sys.path for every test module (pytest puts a conftest's folder there). The
`device` fixture runs a test on the CPU and, where a GPU and a CUDA build exist, on CUDA."""

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
