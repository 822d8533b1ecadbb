"""Strategies: the contract, the five built-ins and the small actions that write."""
