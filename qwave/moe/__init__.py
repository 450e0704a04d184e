"""Mixture-of-Experts of quantized experts: config, routers, routing rules, expert selection, analysis."""
