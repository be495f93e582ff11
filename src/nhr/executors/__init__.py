"""Executors run the stages of `nhr.pipeline` over shards; stage code never knows which one."""
