"""``rlinterp run``: the run config, the ordered stages over one output directory, the result
read back from disk, the report and the figures."""
