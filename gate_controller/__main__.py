import sys

from gate_controller.cli import main

sys.exit(main())
