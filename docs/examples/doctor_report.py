# What pytest-heavy decides on this machine: `pytest-heavy doctor --json`, read and summarized.
# pytest:
"""Runs as a test through pytest-heavy's examples runner (the empty header above: it always runs).

The doctor reads this project's pytest configuration from the working directory (the repository root
when run as a test), probes the hardware the way a session does, and says for every marker whether its
tests run here, and why not.
"""

import json
import subprocess
import sys

doctor = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor", "--json"], check=True,
                        capture_output=True, text=True, timeout=60)
doc = json.loads(doctor.stdout)
print(f"machine: {doc['summary']}")
for name, verdict in sorted(doc["markers"].items()):
    where = " (isolated)" if verdict["isolated"] else ""
    print(f"  {name:24} {'runs' + where if verdict['runs'] else 'skipped: ' + verdict['reason']}")

if not doc["hardware"]["gpus"]:  # without a GPU, every GPU marker is gated, each with the probe's reason
    gated = [v for v in doc["markers"].values() if v["gpu"]]
    assert gated and all(not v["runs"] and v["reason"] for v in gated), gated
