"""The harness lives in benchmarks/ (not installed): make the checkout root importable for these tests."""
from __future__ import annotations

import sys

from conclave.runtime import config

if str(config.REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(config.REPO_ROOT))
