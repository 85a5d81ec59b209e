"""``python -m zdk.cli``: the same as the ``zdk`` console script."""

import sys

from zdk.cli import main

sys.exit(main())
