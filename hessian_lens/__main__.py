"""``python -m hessian_lens``: see :mod:`hessian_lens.cli`."""

import sys

from hessian_lens.cli import main

sys.exit(main())
