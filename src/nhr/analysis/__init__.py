"""Analysis of a run: survival, thresholds, compute estimates and the HTML report."""
