"""kdumpsim: a discrete-event simulation of Linux kdump's crash path that
produces real ELF vmcores. See README.md and DESIGN notes in docs/."""

__version__ = "0.1.0"
