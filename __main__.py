"""``python -m consistent_video run|demo|smoke-weights ...``"""
import sys

from . import NODE_CLASS_MAPPINGS  # noqa: F401  (registers every node and model family)
from .nodes.runner.cli import main

sys.exit(main())
