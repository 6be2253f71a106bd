"""neuralstyle's Hydra config trees: one per command-line entry (run/, train/, apply/) and the
shared component groups (components/)."""
