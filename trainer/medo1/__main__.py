import sys

from medo1.cli import main

sys.exit(main())
