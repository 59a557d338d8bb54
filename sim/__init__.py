"""ocs-sim: protocol clients, scenarios, load generator, latency/throughput report."""
