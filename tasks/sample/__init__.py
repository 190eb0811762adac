"""Sampling: K candidate answers per prompt from a policy, written to the ``responses`` table."""
