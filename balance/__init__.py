"""balance: the regularization balance of a network under super-convergence."""
