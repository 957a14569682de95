"""The producer side must import without torch: `augment` runs on machines that have no worker extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BLOCK_TORCH = """
import sys
sys.modules['torch'] = None          # any `import torch` now raises ImportError
import producer.cli, shared.storage, shared.datasets, shared.specs
import shared.settings, shared.shards, shared.manifest, shared.layout, shared.jobs, shared.broker, producer.client
import producer.dashboard.app, producer.dashboard.data  # the dashboard belongs with the producer: torch-free
assert sys.modules['torch'] is None, 'torch was replaced'
assert 'torchvision' not in sys.modules
leaked = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision') and sys.modules[name])
assert not leaked, leaked
print('ok')
"""


def test_producer_imports_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_producer_does_not_load_torch_when_available() -> None:
    """Even with torch installed, importing the CLI does not pay for loading it."""
    code = (
        "import sys, producer.cli, shared.datasets, shared.storage, shared.specs; "
        "print(sorted(n for n in ('torch', 'torchvision') if n in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
