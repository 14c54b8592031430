"""Allow ``python -m coze_speaker``."""

import sys

from .cli import main

sys.exit(main())
