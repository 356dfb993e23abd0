"""Running jobs: the session, the run loop, pacing, polling, durable writes, progress."""
