"""Privacy: DP-FedAvg (dp), secure aggregation (secagg), DP on a rotated grid under secure
aggregation (dp_quant), leakage attacks (leakage), and the pipeline stages they plug in as (stages)."""
