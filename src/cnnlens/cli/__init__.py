"""The ``cnnlens`` command line. Each command group lives in its own module."""

from __future__ import annotations

from . import attack as _attack  # noqa: F401,E402
from . import benchmark as _benchmark  # noqa: F401,E402

# command modules register themselves on `app` when imported (one line each)
from . import demo as _demo  # noqa: F401,E402
from . import evaluate as _evaluate  # noqa: F401,E402
from . import explain as _explain  # noqa: F401,E402
from . import explore as _explore  # noqa: F401,E402
from . import inside as _inside  # noqa: F401,E402
from . import layers as _layers  # noqa: F401,E402
from . import microscope as _microscope  # noqa: F401,E402
from . import train as _train  # noqa: F401,E402
from .common import app, main  # noqa: F401
