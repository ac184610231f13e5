"""The Python embedding API (async VM facade, sync run_agents)."""
