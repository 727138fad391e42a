"""Models: loading configs and checkpoints without running code from files, the dropout layers MC dropout samples,
what MC dropout can do with a network, and the cache of its deterministic prefix."""
