"""Serving: deployments, load balancers and the policy on what a load balancer
may listen on and send traffic towards."""
