"""Backend implementations, one module per backend and op family
(``<backend>_<family>.py``); see docs/INTERNALS.md for the interface they share."""
