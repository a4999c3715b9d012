"""tljax: freeze-sweep transfer learning with exact FLOP, energy and memory accounting."""

__version__ = "0.1.0"
