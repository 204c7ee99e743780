# A bfloat16 matrix product on the GPU, checked against float32 and timed.
# pytest: requires_gpu, timeout=300
"""Runs as a test through pytest-heavy's examples runner; ``requires_gpu`` in the header gates it like a
test: without a GPU it is skipped with the probe's reason, before any process starts.
"""

import sys

try:
    import torch
except ModuleNotFoundError:
    print("torch is not installed (make install WITH_TORCH=1 adds it)", file=sys.stderr)
    sys.exit(77)

if not torch.cuda.is_available():  # NVML sees a GPU that this torch cannot use (a CPU build, say)
    print(f"torch {torch.__version__} cannot use the GPU (CPU build or driver mismatch)", file=sys.stderr)
    sys.exit(77)

n = 4096
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
error = (a @ b).float() - a.float() @ b.float()
relative = (error.norm() / (a.float() @ b.float()).norm()).item()

start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
a @ b  # warm-up: cuBLAS picks its kernel on the first call
start.record()
for _ in range(20):
    a @ b
end.record()
torch.cuda.synchronize()
seconds = start.elapsed_time(end) / 1000 / 20
print(f"{torch.cuda.get_device_name()}: {2 * n**3 / seconds / 1e12:.0f} TFLOP/s bfloat16, "
      f"relative error {relative:.1e} against float32")
assert relative < 1e-2
