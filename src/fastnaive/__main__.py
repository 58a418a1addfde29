import sys

from fastnaive.cli import main

sys.exit(main())
