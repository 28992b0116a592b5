"""Subcommands of ``mlp-torch``; see :mod:`mlp_torch.cli` for the contract each module follows."""
