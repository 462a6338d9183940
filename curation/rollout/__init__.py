"""Safe cut-over: the rollout policy (pure) and the decider every proxy runs."""
