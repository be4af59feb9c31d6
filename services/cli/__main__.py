"""``python -m services.cli`` is ``veil`` (``veil up`` starts its children this way)."""

import sys

from services.cli.main import main

sys.exit(main())
