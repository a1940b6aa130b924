"""What every layer shares: safe artifact writing, the output-directory claim, named random
streams and the report kit (``core.report``: every page rlinterp writes). Imports nothing
above ``rlinterp.errors``."""
