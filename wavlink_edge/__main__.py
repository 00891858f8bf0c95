"""`python -m wavlink_edge ...` runs the `wavlink-edge` command line."""
import sys

from wavlink_edge.runtime.cli import main

sys.exit(main())
