"""Container runtime: the seam between the agent's decisions and real processes."""
