"""The scheduler: `pgvault tick` decides what is due (engine), records runs (state) and lets an
idle tick stop early (note). Nothing below this layer imports it."""
