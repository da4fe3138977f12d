"""Model families: one module per family (its network, its inference step, its export examples)."""
