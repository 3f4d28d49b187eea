"""Running units of work: Ray, the unit runner, the run lock."""
