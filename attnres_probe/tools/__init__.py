"""The user-facing tools built on the layers below: the demo, the claims table, the report,
figure export and the greedy pruning path. Nothing in the layers imports from here."""
