"""`python3 -m ringkeeper_devcluster up|down|status|kubeconfig|logs|fault`."""

import sys

from .cli import main

sys.exit(main())
