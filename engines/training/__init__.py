"""Training of the networks on simulated nights: data, loops, metrics and what ships."""
