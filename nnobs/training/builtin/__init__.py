"""The built-in worker's own nets, tasks, net shorthand and sampler, in numpy."""
