# Fit a line with torch on the CPU: a few hundred small ops, about a second once torch is imported.
# pytest: timeout=120
"""Runs as a test through pytest-heavy's examples runner.

Without torch it exits with status 77, which the runner reports as a skip whose reason is the last line
of stderr (the automake convention), instead of a failure.
"""

import sys

try:
    import torch
except ModuleNotFoundError:
    print("torch is not installed (make install WITH_TORCH=1 adds it)", file=sys.stderr)
    sys.exit(77)

torch.manual_seed(0)
x = torch.linspace(-1, 1, 256).unsqueeze(1)
y = 3 * x + 2 + 0.01 * torch.randn_like(x)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
for _ in range(300):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()

weight, bias = model.weight.item(), model.bias.item()
print(f"y = {weight:.3f} x + {bias:.3f}  (loss {loss.item():.2e}; true line: y = 3 x + 2)")
assert abs(weight - 3) < 0.05 and abs(bias - 2) < 0.05
