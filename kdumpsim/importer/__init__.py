"""`kdumpsim import`: a model file from a real machine (issue 16).

Reads the running host's /proc and /sys, or the same paths under a saved
tree (`root`), and writes a model YAML in which every imported value carries
a comment naming the file it came from. What it cannot classify it lists and
does not guess.
"""

from kdumpsim.importer.host import Imported, import_tree

__all__ = ["Imported", "import_tree"]
