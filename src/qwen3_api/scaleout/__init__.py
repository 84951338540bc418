"""Scaling out on Ray Serve: engine replicas behind one prefix-aware ingress (`qwen3-api serve --replicas N`).

Only this package imports ray; the CLI imports it when the settings ask for replicas or a Ray cluster.
`routing` and `routing_key` are plain Python (no ray) and tested on their own.
"""
