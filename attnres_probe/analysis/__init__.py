"""Pure functions of recorded runs (xarray in, xarray or plain numbers out; no plotting).

- ``dilution``: stream RMS and relative update vs depth, growth exponent of the stream.
- ``depth``: depth-attention weights, their entropy and effective number of sources.
- ``gradients``: gradient-norm profile across depth and its spread.
- ``pruning``: zero-ablation sensitivity from a checkpoint, compared with recorded proxies.
- ``summary``: a run's headline numbers as a dict.
- ``select``: one step or the tail window of a run; the errors analyses raise.
"""
