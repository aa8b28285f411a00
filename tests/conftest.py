import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `cache_core` and `testbed` import from the checkout
    sys.path.insert(0, str(REPO))
