import sys

from conclave.runtime.cli import main

sys.exit(main())
