"""Other ways to run a folder than the local threads of `cutq_runtime.batch.run`: `ray_engine` (a Ray cluster)."""
