"""Linear algebra on networks: a warm-started Lanczos, Hessian-vector products and the sharpness, empirical-NTK
products and spectra. Nothing here imports the training loop."""
