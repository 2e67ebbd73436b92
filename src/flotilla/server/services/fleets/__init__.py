"""Fleets and nodes: fleet recipes and their planning, the nodes they bring
(inventory, health, isolation, trust, certificates), and the node agents."""
