"""The fused ops, one folder each (``tcr/``: the staged TCR regulariser). Backends are chosen by
``mmae_fast.backends``."""
