"""What every layer shares: safe artifact writing, the output-directory claim, named random
streams and the HTML building blocks of reports. Imports nothing above ``rlinterp.errors``."""
