"""Deprecated alias of :mod:`hessian_lens.engine` (the engine was one module until 0.3).

``from hessian_lens.summary import pseudo_hessian`` keeps working, with a
``DeprecationWarning``; import from ``hessian_lens`` (``hl.pseudo_hessian``) or
``hessian_lens.engine`` instead.
"""

import warnings

from hessian_lens.engine import *  # noqa: F403
from hessian_lens.engine import __all__  # noqa: F401

warnings.warn(
    "hessian_lens.summary is deprecated: import from hessian_lens or hessian_lens.engine",
    DeprecationWarning,
    stacklevel=2,
)
