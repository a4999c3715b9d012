"""The decision layer: statistics over seeds, the Pareto front, the recommendation, the console
table and the figures."""
