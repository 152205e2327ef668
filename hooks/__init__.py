"""Probes: forward/backward hooks that record a model's depth dynamics while it trains.

    from attnres_probe.hooks import probe

    with probe(model, "runs/exp1", every=10) as p:
        ...; loss.backward(); p.step(loss=loss); opt.step()

See ``attnres_probe.hooks.probe`` for the step semantics and ``docs/probe.md`` for the
recorded variables, layer discovery and distributed use.
"""

from attnres_probe.hooks.discovery import LayerDiscoveryError
from attnres_probe.hooks.probe import Probe, ProbeError, ProbeStoreError, ProbeWarning, probe

__all__ = [
    "probe",
    "Probe",
    "ProbeError",
    "ProbeStoreError",
    "ProbeWarning",
    "LayerDiscoveryError",
]
